import io
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from catalog.models import Product, ProductImage
from tests.helpers import add_product_form, decompression_bomb


def photo(fashion_dataset: Path, name: str = "shirt.jpg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, (fashion_dataset / "images" / "10017.jpg").read_bytes(), content_type="image/jpeg")


@pytest.mark.django_db
def test_staff_add_a_product_with_a_photo(staff_client, fashion_dataset):
    response = staff_client.post(
        reverse("admin:catalog_product_add"), add_product_form(photo(fashion_dataset, "../../evil name.jpg"))
    )

    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    product = Product.objects.get(sku="NEW-001")
    assert product.slug == "linen-summer-shirt"
    image = product.images.get()
    assert (image.width, image.height) == (224, 224)
    name = Path(image.image.name)
    assert name.parts[0] == "products" and "evil" not in name.name and name.suffix == ".jpg"
    assert Path(image.image.path).is_file()
    assert Path(image.image.path).read_bytes()[:2] == b"\xff\xd8"


@pytest.mark.django_db
def test_a_text_file_renamed_jpg_is_refused_with_a_form_error(staff_client, media_root):
    fake = SimpleUploadedFile("photo.jpg", b"this is not really a photo\n" * 20, content_type="image/jpeg")

    response = staff_client.post(reverse("admin:catalog_product_add"), add_product_form(fake))

    assert response.status_code == 200
    inline_errors = response.context["inline_admin_formsets"][0].formset.errors
    assert "not an image we can read" in str(inline_errors)
    assert b"not an image we can read" in response.content
    assert not Product.objects.exists() and not ProductImage.objects.exists()
    assert not any(path.is_file() for path in media_root.rglob("*"))


@pytest.mark.django_db
def test_oversized_and_bomb_uploads_are_refused(staff_client, settings):
    response = staff_client.post(
        reverse("admin:catalog_product_add"),
        add_product_form(SimpleUploadedFile("bomb.png", decompression_bomb(), content_type="image/png")),
    )
    assert b"megapixels" in response.content

    settings.IMAGE_UPLOAD_MAX_BYTES = 500
    big = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(big, format="PNG")
    response = staff_client.post(
        reverse("admin:catalog_product_add"),
        add_product_form(SimpleUploadedFile("big.png", big.getvalue(), content_type="image/png")),
    )
    assert b"the limit is 500" in response.content.replace(b"\xc2\xa0", b" ")
    assert not Product.objects.exists()


@pytest.mark.django_db
def test_replacing_a_photo_in_admin_stores_the_new_one_and_removes_the_old(
    staff_client, fashion_dataset, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(reverse("admin:catalog_product_add"), add_product_form(photo(fashion_dataset)))
    product = Product.objects.get()
    image = product.images.get()
    old_path, old_checksum = Path(image.image.path), image.checksum
    form = add_product_form(
        SimpleUploadedFile("other.jpg", (fashion_dataset / "images" / "10020.jpg").read_bytes()),
        **{"images-INITIAL_FORMS": "1", "images-0-id": str(image.pk), "images-0-product": str(product.pk)},
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(reverse("admin:catalog_product_change", args=[product.pk]), form)

    assert response.status_code == 302
    image.refresh_from_db()
    assert image.checksum != old_checksum
    assert Path(image.image.path).is_file() and not old_path.exists()


@pytest.mark.django_db
def test_product_list_has_thumbnails_search_and_filters(staff_client, catalogue):
    url = reverse("admin:catalog_product_changelist")

    page = staff_client.get(url)
    assert page.status_code == 200
    assert page.content.count(b'<img src="/media/products/') >= 50

    by_sku = staff_client.get(url, {"q": "10003"})
    assert list(by_sku.context["cl"].result_list) == [Product.objects.get(sku="10003")]

    by_name = staff_client.get(url, {"q": "palm tree"})
    assert {p.sku for p in by_name.context["cl"].result_list} == set(
        Product.objects.filter(name__icontains="palm tree").values_list("sku", flat=True)
    )

    women = staff_client.get(url, {"gender__exact": "Women", "article_type__exact": "Tshirts"})
    results = list(women.context["cl"].result_list)
    assert results and all(p.gender == "Women" and p.article_type == "Tshirts" for p in results)


@pytest.mark.django_db
def test_change_page_shows_image_previews(staff_client, catalogue):
    product = Product.objects.first()
    page = staff_client.get(reverse("admin:catalog_product_change", args=[product.pk]))
    assert f'<img src="{product.primary_image.image.url}"'.encode() in page.content, "a preview, not only a link"
