import csv
import os
import threading
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from catalog.models import Product, ProductImage


def run_import(folder: Path, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("import_catalog", str(folder), *args, stdout=out, stderr=err, verbosity=0)
    return out.getvalue(), err.getvalue()


def read_rows(folder: Path) -> tuple[list[str], list[list[str]]]:
    with (folder / "styles.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def write_rows(folder: Path, header: list[str], rows: list[list[str]]) -> None:
    with (folder / "styles.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])


def stored_files(media_root: Path) -> set[Path]:
    return {path for path in media_root.rglob("*") if path.is_file()}


@pytest.mark.django_db
def test_import_creates_products_with_images_and_attributes(kaggle_folder):
    out, err = run_import(kaggle_folder)

    assert "12 created" in out and "0 skipped" in out
    assert err == ""
    product = Product.objects.get(sku="10000")
    assert product.name == "Palm Tree Girls Sp Jace Sko White Skirts"
    assert product.slug == "palm-tree-girls-sp-jace-sko-white-skirts"
    assert (product.gender, product.master_category, product.sub_category) == ("Women", "Apparel", "Bottomwear")
    assert (product.article_type, product.base_colour, product.season, product.year, product.usage) == (
        "Skirts",
        "White",
        "Summer",
        2011,
        "Casual",
    )
    image = product.primary_image
    assert (image.width, image.height) == (224, 224)
    assert len(image.checksum) == 64
    assert image.image.name.endswith(".jpg") and "10000" not in image.image.name
    assert Path(image.image.path).is_file()


@pytest.mark.django_db
def test_second_import_changes_nothing(kaggle_folder, media_root):
    run_import(kaggle_folder)
    before = {(p.sku, p.updated_at, p.primary_image.image.name) for p in Product.objects.with_images()}
    files_before = stored_files(media_root)

    out, _ = run_import(kaggle_folder)

    assert "0 created, 0 updated, 12 unchanged" in out
    assert {(p.sku, p.updated_at, p.primary_image.image.name) for p in Product.objects.with_images()} == before
    assert ProductImage.objects.count() == 12
    assert stored_files(media_root) == files_before


@pytest.mark.django_db(transaction=True)
def test_changed_row_and_changed_image_update_the_product(kaggle_folder, media_root, fashion_dataset):
    run_import(kaggle_folder)
    header, rows = read_rows(kaggle_folder)
    rows[0][header.index("productDisplayName")] = "Palm Tree Girls Summer Skirt"
    rows[0][header.index("baseColour")] = "Pink"
    write_rows(kaggle_folder, header, rows)
    old_image = ProductImage.objects.get(product__sku=rows[1][0])
    old_path = Path(old_image.image.path)
    (kaggle_folder / "images" / f"{rows[1][0]}.jpg").write_bytes(
        (fashion_dataset / "images" / "10020.jpg").read_bytes()
    )

    out, _ = run_import(kaggle_folder)

    assert "0 created, 2 updated, 10 unchanged" in out
    renamed = Product.objects.get(sku=rows[0][0])
    assert (renamed.name, renamed.slug, renamed.base_colour) == (
        "Palm Tree Girls Summer Skirt",
        "palm-tree-girls-summer-skirt",
        "Pink",
    )
    new_image = ProductImage.objects.get(product__sku=rows[1][0])
    assert new_image.pk == old_image.pk and new_image.checksum != old_image.checksum
    assert not old_path.exists(), "the replaced file is removed"
    assert Path(new_image.image.path).is_file()


@pytest.mark.django_db
def test_bad_rows_are_reported_by_line_and_skipped(kaggle_folder, media_root):
    header, rows = read_rows(kaggle_folder)
    rows[1] = rows[1][:4]  # line 3: too few columns
    (kaggle_folder / "images" / f"{rows[2][0]}.jpg").unlink()  # line 4: no image
    (kaggle_folder / "images" / f"{rows[3][0]}.jpg").write_text("<html>not a photo</html>")  # line 5: not an image
    jpeg = (kaggle_folder / "images" / f"{rows[4][0]}.jpg").read_bytes()
    (kaggle_folder / "images" / f"{rows[4][0]}.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # line 6: truncated
    rows[5][header.index("year")] = "last year"  # line 7
    rows[6][header.index("productDisplayName")] = ""  # line 8
    rows[7][0] = "../../etc/passwd"  # line 9
    rows.append(list(rows[8]))  # line 14: the same id again
    write_rows(kaggle_folder, header, rows)

    out, err = run_import(kaggle_folder)

    assert "5 created, 0 updated, 0 unchanged, 8 skipped" in out
    problems = dict(line.split(": skipped, ", 1) for line in err.strip().splitlines())
    assert set(problems) == {f"line {n}" for n in (3, 4, 5, 6, 7, 8, 9, 14)}
    assert "expected 10 columns, found 4" in problems["line 3"]
    assert "missing" in problems["line 4"]
    assert "not an image" in problems["line 5"]
    assert "damaged or incomplete" in problems["line 6"]
    assert "year" in problems["line 7"]
    assert "productDisplayName is empty" in problems["line 8"]
    assert "not a valid product id" in problems["line 9"]
    assert "duplicate id" in problems["line 14"] and "line 10" in problems["line 14"]
    skipped_ids = {rows[i][0] for i in (2, 3, 4, 5, 6)}
    assert not Product.objects.filter(sku__in=skipped_ids).exists(), "no half products"
    assert Product.objects.count() == 5 and ProductImage.objects.count() == 5
    assert len(stored_files(media_root)) == 5, "no files left behind by skipped rows"


@pytest.mark.django_db
def test_unquoted_commas_in_a_display_name_belong_to_the_name(kaggle_folder):
    header, rows = read_rows(kaggle_folder)
    text = (kaggle_folder / "styles.csv").read_text().splitlines()
    text[1] = ",".join(rows[0][:-1]) + ",Palm Tree Girls, Summer, Skirt"
    (kaggle_folder / "styles.csv").write_text("\n".join(text) + "\n")

    run_import(kaggle_folder)

    assert Product.objects.get(sku=rows[0][0]).name == "Palm Tree Girls, Summer, Skirt"


@pytest.mark.django_db
def test_limit_imports_only_the_first_rows(kaggle_folder):
    out, _ = run_import(kaggle_folder, "--limit", "5")

    assert "5 rows" in out
    header, rows = read_rows(kaggle_folder)
    assert set(Product.objects.values_list("sku", flat=True)) == {row[0] for row in rows[:5]}


@pytest.mark.django_db
def test_a_folder_without_styles_csv_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="styles.csv"):
        run_import(tmp_path)


@pytest.mark.django_db
def test_fashion_mnist_demo_catalogue():
    out = StringIO()
    call_command("import_fashion_mnist", "--count", "30", stdout=out, verbosity=0)

    assert "30 created" in out.getvalue()
    assert Product.objects.count() == 30
    assert Product.objects.values("article_type").distinct().count() >= 8
    image = ProductImage.objects.first()
    assert (image.width, image.height) == (224, 224)
    from PIL import Image

    with Image.open(image.image.path) as picture:
        corner = picture.convert("L").getpixel((0, 0))
    assert corner > 240, "products sit on a white background, like the shop's photos"


# --- Hostile folders: each bad row is skipped and reported by line, and the import goes on --------------


def problems_by_line(err: str) -> dict[int, str]:
    lines = (line.split(": skipped, ", 1) for line in err.strip().splitlines())
    return {int(where.removeprefix("line ")): reason for where, reason in lines}


@pytest.mark.django_db
def test_an_oversized_field_is_skipped_and_later_lines_keep_their_numbers(kaggle_folder):
    header, rows = read_rows(kaggle_folder)
    rows[1][header.index("productDisplayName")] = "x" * 200_000  # line 3
    rows[3][header.index("year")] = "last year"  # line 5
    write_rows(kaggle_folder, header, rows)

    out, err = run_import(kaggle_folder)

    assert "10 created, 0 updated, 0 unchanged, 2 skipped" in out
    problems = problems_by_line(err)
    assert set(problems) == {3, 5}
    assert "field larger than field limit" in problems[3]
    assert "year" in problems[5]
    assert not Product.objects.filter(sku__in=[rows[1][0], rows[3][0]]).exists()


@pytest.mark.django_db
def test_invalid_utf8_is_skipped_and_reported_by_line(kaggle_folder):
    styles = kaggle_folder / "styles.csv"
    lines = styles.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b",", b",Caf\xe9 ", 1)  # line 4: Latin-1, not UTF-8
    styles.write_bytes(b"".join(lines))

    out, err = run_import(kaggle_folder)

    assert "11 created, 0 updated, 0 unchanged, 1 skipped" in out
    problems = problems_by_line(err)
    assert set(problems) == {4} and "not valid UTF-8" in problems[4]
    assert Product.objects.count() == 11


@pytest.mark.django_db(transaction=True)  # the import runs on its own thread and connection
def test_a_fifo_named_like_an_image_is_skipped_without_hanging(kaggle_folder):
    _, rows = read_rows(kaggle_folder)
    fifo = kaggle_folder / "images" / f"{rows[2][0]}.jpg"  # line 4
    fifo.unlink()
    os.mkfifo(fifo)
    result = {}

    def run():
        try:
            result["out"], result["err"] = run_import(kaggle_folder)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    if thread.is_alive():  # release the reader so the suite can end, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the import hung on a FIFO")

    assert "11 created, 0 updated, 0 unchanged, 1 skipped" in result["out"]
    problems = problems_by_line(result["err"])
    assert set(problems) == {4} and "not a regular file" in problems[4]


@pytest.mark.django_db
def test_an_image_linked_from_outside_the_folder_is_not_imported(kaggle_folder, tmp_path):
    _, rows = read_rows(kaggle_folder)
    images = kaggle_folder / "images"
    outside = tmp_path / "private.jpg"
    (images / f"{rows[1][0]}.jpg").rename(outside)
    (images / f"{rows[1][0]}.jpg").symlink_to(outside)  # line 3
    (images / f"{rows[2][0]}.jpg").unlink()
    (images / f"{rows[2][0]}.jpg").symlink_to(Path(f"{rows[3][0]}.jpg"))  # line 4: a link within the folder is fine

    out, err = run_import(kaggle_folder)

    assert "11 created, 0 updated, 0 unchanged, 1 skipped" in out
    problems = problems_by_line(err)
    assert set(problems) == {3} and "outside" in problems[3]
    assert not Product.objects.filter(sku=rows[1][0]).exists()
    assert Product.objects.get(sku=rows[2][0]).primary_image is not None
