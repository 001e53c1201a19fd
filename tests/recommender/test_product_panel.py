"""The product admin shows the recommender's view: each photo's embedding state, the similar items
shoppers see, a Re-embed button, and a list column and filter on the primary photo's state."""

import json
from pathlib import Path

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.urls import reverse

from catalog.images import normalise_image
from catalog.models import Product, ProductImage
from recommender.embedding import embed_images
from recommender.models import ImageEmbedding
from recommender.product_panel import EmbeddingState, photo_states, product_panel, with_primary_photo_state
from recommender.similar import similar_products
from tests.helpers import DATASET

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:catalog_product_changelist")


def list_query_budget() -> int:
    """Session, user, active model, two counts, the page's products and their photos, and each
    filter's choices: never one per product."""
    return 7 + len(admin.site.get_model_admin(Product).list_filter)


def change_url(product: Product) -> str:
    return reverse("admin:catalog_product_change", args=[product.pk])


def add_photo(product: Product, sku: str, position: int) -> ProductImage:
    """Another photo of the product (a shared catalogue photo), stored as the admin stores uploads."""
    with (DATASET / "images" / f"{sku}.jpg").open("rb") as file:
        stored = normalise_image(file)
    return ProductImage.objects.create(product=product, position=position, image=stored.as_file(sku))


def break_and_embed(image: ProductImage, backbone) -> None:
    """The photo's file is damaged, so embedding it fails with a reason."""
    Path(image.image.path).write_bytes(b"not a photo any more")
    ImageEmbedding.objects.filter(image=image).delete()
    assert embed_images([image.pk], backbone).failed == 1


@pytest.fixture
def three_photos(embedded_catalogue, lite2) -> Product:
    """A product whose first photo is embedded, second is new (pending) and third failed."""
    product = Product.objects.get(sku="10007")
    add_photo(product, "10017", position=1)
    break_and_embed(add_photo(product, "10020", position=2), lite2)
    return product


def test_each_photo_shows_its_state_for_the_backbone(three_photos, lite2):
    embedded, pending, failed = photo_states(three_photos, lite2)

    assert embedded.state == EmbeddingState.EMBEDDED and embedded.computed_at is not None
    assert (pending.state, pending.computed_at, pending.error) == (EmbeddingState.PENDING, None, "")
    assert failed.state == EmbeddingState.FAILED and "not an image we can read" in failed.error
    assert [photo.image.position for photo in (embedded, pending, failed)] == [0, 1, 2]


def test_an_embedding_of_older_content_is_pending(embedded_catalogue, lite2):
    product = Product.objects.get(sku="10007")
    ImageEmbedding.objects.filter(image__product=product).update(image_checksum="0" * 64)

    [photo] = photo_states(product, lite2)

    assert photo.state == EmbeddingState.PENDING


def test_the_panel_shows_what_the_shop_shows(indexed_catalogue, lite2):
    product = Product.objects.get(sku="10007")

    panel = product_panel(product, lite2)

    shop = similar_products(product, lite2)
    assert [n.product.pk for n in panel.similar.neighbours] == [n.product.pk for n in shop.neighbours]
    assert len(panel.similar.neighbours) == 5 and product.pk not in {n.product.pk for n in panel.similar.neighbours}
    assert not panel.waiting
    assert panel.summary == "Photos: 1 embedded; 5 similar items."


def test_the_change_page_shows_states_similar_items_and_scores(staff_client, three_photos, lite2):
    page = staff_client.get(change_url(three_photos))

    html = page.content.decode()
    assert "What shoppers see" in html
    assert 'embedding-state--embedded">embedded<' in html
    assert 'embedding-state--pending">pending<' in html
    assert 'embedding-state--failed">failed<' in html and "not an image we can read" in html
    assert html.count('form="recommender-re-embed"') == 3
    assert 'id="recommender-re-embed"' in html and "js/admin-recommender-panel.js" in html
    assert 'data-waiting="true"' in html and "Reload the page" in html
    for neighbour in similar_products(three_photos, lite2).neighbours:
        assert f'<a href="{change_url(neighbour.product)}">{neighbour.product.name}</a>' in html
        assert f">{neighbour.score:.3f}<" in html


def test_a_product_without_an_embedding_says_similar_items_are_pending(staff_client, catalogue):
    product = Product.objects.get(sku="10007")

    html = staff_client.get(change_url(product)).content.decode()

    assert 'embedding-state--pending">pending<' in html
    assert "Pending: they appear once a photo of this product is embedded" in html
    assert "recommender-panel__score" not in html


def test_the_add_page_shows_no_panel(staff_client, db):
    html = staff_client.get(reverse("admin:catalog_product_add")).content.decode()

    assert "What shoppers see" not in html and "admin-recommender-panel.js" not in html


def test_the_fragment_is_the_panel_alone(staff_client, three_photos):
    url = reverse("admin:catalog_product_recommender_panel", args=[three_photos.pk])

    response = staff_client.get(url)

    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html and "What shoppers see" not in html
    assert 'data-waiting="true"' in html
    assert 'data-summary="Photos: 1 embedded, 1 pending, 1 failed; 5 similar items."' in html
    assert staff_client.get(reverse("admin:catalog_product_recommender_panel", args=[999999])).status_code == 404


def test_re_embed_deletes_the_embedding_and_queues_the_photo(staff_client, three_photos, redis_server):
    redis_server.flush()
    failed = three_photos.images.get(position=2)
    re_embed = reverse("admin:catalog_product_re_embed", args=[three_photos.pk])

    response = staff_client.post(re_embed, {"image": failed.pk})

    assert response.status_code == 302 and response["Location"] == change_url(three_photos) + "#recommender-panel"
    assert not ImageEmbedding.objects.filter(image=failed).exists()
    assert three_photos.images.get(position=0).embeddings.exists(), "the other photos keep theirs"
    [message] = redis_server.client.lrange("embeddings", 0, -1)
    task = json.loads(message)
    assert task["headers"]["task"] == "recommender.tasks.embed_images_task"
    assert task["headers"]["argsrepr"] == f"([{failed.pk}], 'efficientnet_lite2')"
    page = staff_client.get(response["Location"])
    assert b"The photo is queued for embedding" in page.content


def test_re_embed_says_the_sweep_will_do_it_when_the_queue_is_down(staff_client, three_photos, redis_server):
    photo = three_photos.images.get(position=0)
    re_embed = reverse("admin:catalog_product_re_embed", args=[three_photos.pk])

    redis_server.stop()
    try:
        response = staff_client.post(re_embed, {"image": photo.pk}, follow=True)
    finally:
        redis_server.start()

    assert response.status_code == 200
    assert b"The task queue is unreachable" in response.content and b"the periodic sweep embeds it" in response.content
    assert not ImageEmbedding.objects.filter(image=photo).exists(), "so the sweep finds it"


def test_re_embed_refuses_other_products_photos_and_get(staff_client, three_photos):
    re_embed = reverse("admin:catalog_product_re_embed", args=[three_photos.pk])
    someone_elses = ProductImage.objects.exclude(product=three_photos).first()

    assert staff_client.post(re_embed, {"image": someone_elses.pk}).status_code == 400
    assert staff_client.post(re_embed, {"image": "x"}).status_code == 400
    assert staff_client.get(re_embed).status_code == 405
    assert ImageEmbedding.objects.filter(image=someone_elses).exists()


def test_re_embed_needs_staff_with_change_permission(client, django_user_model, three_photos):
    photo = three_photos.images.get(position=0)
    re_embed = reverse("admin:catalog_product_re_embed", args=[three_photos.pk])

    client.force_login(django_user_model.objects.create_user("shopper", password="a-long-password"))
    response = client.post(re_embed, {"image": photo.pk})
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))

    viewer = django_user_model.objects.create_user("viewer", password="a-long-password", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_product"))
    client.force_login(viewer)
    assert client.post(re_embed, {"image": photo.pk}).status_code == 403
    page = client.get(change_url(three_photos)).content.decode()
    assert "What shoppers see" in page and "Re-embed" not in page

    assert ImageEmbedding.objects.filter(image=photo).exists()


@pytest.fixture
def one_product_per_state(embedded_catalogue, lite2) -> dict[str, Product]:
    """Of the 60 embedded products: two whose primary photo is pending, one failed, one with no photo,
    and one whose primary photo is embedded while a second photo waits."""
    products = list(Product.objects.order_by("pk"))
    pending, failed, no_photo, second_pending, first_pending = products[:5]
    ImageEmbedding.objects.filter(image__product=pending).delete()
    break_and_embed(failed.images.get(), lite2)
    no_photo.images.all().delete()
    add_photo(second_pending, "10017", position=1)
    first_pending.images.update(position=1)
    add_photo(first_pending, "10020", position=0)
    return {"pending": pending, "failed": failed, "no_photo": no_photo, "embedded": second_pending}


def test_products_are_annotated_with_their_primary_photos_state(one_product_per_state, lite2):
    states = dict(with_primary_photo_state(Product.objects.all(), lite2).values_list("pk", "primary_photo_state"))

    for state, product in one_product_per_state.items():
        assert states[product.pk] == state
    assert sorted(states.values()).count("pending") == 2


@pytest.mark.parametrize(("state", "count"), [("embedded", 56), ("pending", 2), ("failed", 1), ("no_photo", 1)])
def test_the_list_filters_on_the_state_in_a_bounded_number_of_queries(
    staff_client, one_product_per_state, state, count, django_assert_max_num_queries
):
    with django_assert_max_num_queries(list_query_budget()):
        page = staff_client.get(CHANGELIST, {"photo_embedding": state})

    changelist = page.context["cl"]
    assert changelist.result_count == count
    assert {product.primary_photo_state for product in changelist.result_list} == {state}
    label = EmbeddingState(state).label
    assert page.content.decode().count(f'embedding-state--{state}">{label}<') == min(count, 50)


def test_the_list_shows_every_products_state_in_a_bounded_number_of_queries(
    staff_client, one_product_per_state, django_assert_max_num_queries
):
    with django_assert_max_num_queries(list_query_budget()):
        page = staff_client.get(CHANGELIST)  # by id: the changed products are on page 1

    html = page.content.decode()
    assert html.count("embedding-state--") == 50
    for state in ("pending", "failed", "no_photo"):
        assert f"embedding-state--{state}" in html
