"""Search by photo and the API under hostile input and heavy use: bounded work, clear refusals, no 500s."""

import io
import subprocess
import sys

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError
from django.http.multipartparser import MultiPartParser
from django.urls import reverse
from PIL import Image

from catalog.models import Product
from tests.helpers import ROOT, photo_upload

pytestmark = pytest.mark.django_db
SEARCH = reverse("recommender:visual-search")
API_SEARCH = reverse("api:search")


def png(size, mode="RGB") -> SimpleUploadedFile:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return SimpleUploadedFile("photo.png", buffer.getvalue(), content_type="image/png")


def error(response) -> dict:
    return response.json()["error"]


# --- Bounded memory ----------------------------------------------------------------------------


def test_a_long_thin_image_is_refused_from_its_header(client, catalogue):
    thin = png((10_000, 100))
    assert len(thin.read()) < 5_000  # a few KB that would decode to a 10000-pixel-wide "photo"
    thin.seek(0)

    api = client.post(API_SEARCH, {"image": thin})

    assert api.status_code == 400 and error(api)["code"] == "aspect_ratio"
    page = client.post(SEARCH, {"image": png((100, 10_000))})
    assert page.status_code == 400 and "one side may be at most 10 times the other" in page.content.decode()


def test_photo_search_has_a_smaller_pixel_budget_than_staff_uploads(client, catalogue, settings):
    from catalog.images import open_image

    settings.VISUAL_SEARCH_MAX_PIXELS, settings.IMAGE_UPLOAD_MAX_PIXELS = 1_000_000, 4_000_000
    photo = png((1500, 1000), mode="1")

    api = client.post(API_SEARCH, {"image": photo})

    assert api.status_code == 400 and error(api)["code"] == "too_many_pixels"
    photo.seek(0)
    assert open_image(photo).size == (1500, 1000), "staff may upload it"


MEASURE_PEAK = """
import io, resource, sys
import django
django.setup()
from PIL import Image
from django.core.files.uploadedfile import SimpleUploadedFile
from recommender.encoding.preprocessing import image_pixels
from recommender.forms import VisualSearchForm

buffer = io.BytesIO()
Image.new("RGB", (6000, 5000), (230, 40, 40)).save(buffer, format="PNG")  # 30 megapixels in 90 KB
upload = SimpleUploadedFile("big.png", buffer.getvalue())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
form = VisualSearchForm({}, {"image": upload})
assert form.is_valid(), form.errors
image_pixels(form.cleaned_data["image"].image, 260)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.slow  # a subprocess, to read its peak memory
def test_a_big_photo_is_shrunk_before_anything_copies_it(subprocess_env):
    result = subprocess.run(
        [sys.executable, "-c", MEASURE_PEAK], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    peak_mb = int(result.stdout.split()[-1])
    # Decoding the 30-megapixel RGB image takes 90 MB; padding it to a square first took 346 MB.
    assert peak_mb < 180, f"{peak_mb} MB"


# --- Refused before the body is read, and clear messages --------------------------------------------


def test_an_oversized_upload_is_refused_unread_with_the_promised_message(client, catalogue, settings, monkeypatch):
    settings.IMAGE_UPLOAD_MAX_BYTES = 100_000

    def never(*args, **kwargs):
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(MultiPartParser, "parse", never)
    big = SimpleUploadedFile("big.jpg", b"\xff" * 300_000, content_type="image/jpeg")

    page = client.post(SEARCH, {"image": big})

    assert page.status_code == 400
    assert "larger than the limit of 97.7" in page.content.decode() and 'role="alert"' in page.content.decode()
    big.seek(0)
    api = client.post(API_SEARCH, {"image": big})
    assert api.status_code == 400 and error(api)["code"] == "too_large"


def test_chunked_and_malformed_bodies_get_clear_errors(client, catalogue):
    chunked = client.post(API_SEARCH, {"image": photo_upload()}, HTTP_TRANSFER_ENCODING="chunked")
    assert chunked.status_code == 411 and error(chunked)["code"] == "length_required"
    page = client.post(SEARCH, {"image": photo_upload()}, HTTP_TRANSFER_ENCODING="chunked")
    assert page.status_code == 411 and "Content-Length" in page.content.decode()

    malformed = client.generic("POST", API_SEARCH, b"--x\r\nnot a form", content_type="multipart/form-data")
    assert malformed.status_code == 400 and error(malformed)["code"] == "invalid_body"
    page = client.generic("POST", SEARCH, b"--x\r\nnot a form", content_type="multipart/form-data")
    assert page.status_code == 400 and "not a form with photos we can read" in page.content.decode()


def test_a_wrong_method_and_an_unknown_api_url_answer_json(client, db):
    wrong = client.get(API_SEARCH)
    assert wrong.status_code == 405 and error(wrong)["code"] == "method_not_allowed" and "POST" in wrong["Allow"]
    unknown = client.get("/api/nothing-here")
    assert unknown.status_code == 404 and error(unknown)["code"] == "not_found"


def test_control_characters_in_similar_filters_are_a_400_not_a_database_error(client, catalogue):
    product = Product.objects.first()
    for filters in [{"gender": "\x00"}, {"article_type": "Shirts\x00"}, {"colour": "blue\x00"}]:
        response = client.get(reverse("api:similar", args=[product.pk]), filters)
        assert response.status_code == 400 and error(response)["code"] == "invalid", filters


def test_an_unexpected_api_failure_answers_json(client, catalogue, monkeypatch):
    from recommender import api

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(api, "similar_products", broken)
    client.raise_request_exception = False
    response = client.get(reverse("api:similar", args=[Product.objects.first().pk]))
    assert response.status_code == 500 and error(response)["code"] == "server_error"


def test_a_damaged_photo_does_not_leak_the_decoder_message(client, catalogue, fashion_dataset):
    data = (fashion_dataset / "images" / "10007.jpg").read_bytes()
    api = client.post(API_SEARCH, {"image": SimpleUploadedFile("x.jpg", data[: len(data) // 2])})
    assert error(api) == {
        "status": 400,
        "code": "corrupt",
        "message": "The image data is damaged or incomplete.",
        "details": {"image": [{"message": "The image data is damaged or incomplete.", "code": "corrupt"}]},
    }


def test_the_search_page_says_which_filter_is_wrong(client, catalogue):
    page = client.post(SEARCH, {"image": photo_upload(), "gender": "Nobody", "k": "500"})
    html = page.content.decode()
    assert page.status_code == 400
    assert "Select a valid choice. Nobody is not one of the available choices." in html
    assert "less than or equal to 50" in html


# --- Limits on costly requests ---------------------------------------------------------------------


def test_photo_searches_are_limited_per_client(client, catalogue, settings, redis_server):
    redis_server.flush()
    settings.VISUAL_SEARCH_RATE_LIMIT = "2/d"  # a window that will not roll over mid-test
    text = b"not a photo"
    for _ in range(2):  # refused photos count too: the work of reading them is done
        assert client.post(API_SEARCH, {"image": SimpleUploadedFile("a.txt", text)}).status_code == 400

    api = client.post(API_SEARCH, {"image": SimpleUploadedFile("a.txt", text)})
    page = client.post(SEARCH, {"image": SimpleUploadedFile("a.txt", text)})

    assert api.status_code == 429 and error(api)["code"] == "rate_limited" and 1 <= int(api["Retry-After"]) <= 86_400
    assert page.status_code == 429 and "Too many photo searches" in page.content.decode()
    other = client.post(API_SEARCH, {"image": SimpleUploadedFile("a.txt", text)}, REMOTE_ADDR="10.1.2.3")
    assert other.status_code == 400, "another client has its own allowance"


def test_the_similar_api_is_limited_per_client(client, embedded_catalogue, settings, redis_server):
    redis_server.flush()
    settings.SIMILAR_API_RATE_LIMIT = "3/d"
    url = reverse("api:similar", args=[Product.objects.first().pk])
    assert [client.get(url).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_admin_sign_in_attempts_are_limited(client, db, settings, redis_server, django_user_model):
    redis_server.flush()
    settings.ADMIN_LOGIN_RATE_LIMIT = "3/d"
    django_user_model.objects.create_superuser("staff", "staff@example.com", "a-long-password")
    login = reverse("admin:login")
    guesses = [client.post(login, {"username": "staff", "password": f"guess{n}"}).status_code for n in range(3)]
    assert guesses == [200, 200, 200]  # the form again, with its error

    refused = client.post(login, {"username": "staff", "password": "a-long-password"})

    assert refused.status_code == 429 and "Too many sign-in attempts" in refused.content.decode()
    assert client.get(login).status_code == 200, "the form still shows"


def test_limits_let_requests_through_when_the_cache_is_down(client, embedded_catalogue, settings):
    settings.SIMILAR_API_RATE_LIMIT = "1/m"
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",  # nothing listens there
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    url = reverse("api:similar", args=[Product.objects.first().pk])
    assert [client.get(url).status_code for _ in range(3)] == [200, 200, 200]


def test_a_filter_that_matches_nothing_answers_at_once(client, indexed_catalogue, monkeypatch):
    from recommender.retrieval import search

    def no_search(*args, **kwargs):
        raise AssertionError("searched the index")

    monkeypatch.setattr(search, "candidate_images", no_search)
    url = reverse("api:similar", args=[Product.objects.first().pk])

    response = client.get(url, {"k": "50", "gender": "Nobody"})

    assert response.status_code == 200 and response.json()["results"] == []


def test_a_rare_filter_stops_widening_at_a_bound(client, indexed_catalogue, monkeypatch, settings):
    from recommender.retrieval import search

    settings.SEARCH_MAX_CANDIDATES = 30
    asked = []
    real = search.candidate_images

    def counting(query, count, backbone):
        asked.append(count)
        return real(query, count, backbone)

    monkeypatch.setattr(search, "candidate_images", counting)
    rare = Product.objects.get(sku="10007")
    other = Product.objects.exclude(article_type=rare.article_type).first()

    response = client.get(reverse("api:similar", args=[other.pk]), {"article_type": rare.article_type})

    assert response.status_code == 200 and max(asked) == 30


@pytest.mark.slow  # runs the model
def test_a_search_that_waits_too_long_for_the_model_gets_a_503(client, indexed_catalogue, settings, lite2, monkeypatch):
    from recommender.encoding import embedder as embedder_module

    monkeypatch.setattr(embedder_module, "_embedders", {})
    settings.VISUAL_SEARCH_MODEL_WAIT_SECONDS, settings.EMBEDDING_INTERPRETERS = 0, 1
    embedder = embedder_module.get_embedder(lite2)

    with embedder.pool.interpreter():  # another request holds the process's only interpreter
        api = client.post(API_SEARCH, {"image": photo_upload()})
        page = client.post(SEARCH, {"image": photo_upload()})

    assert api.status_code == 503 and error(api)["code"] == "busy" and api["Retry-After"] == "5"
    assert page.status_code == 503 and "busy" in page.content.decode()
    assert client.post(API_SEARCH, {"image": photo_upload()}).status_code == 200


def test_a_database_outage_is_a_clean_503(client, catalogue, monkeypatch):
    from catalog import browse
    from recommender import api

    def down(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(browse.BrowseQuery, "products", down)
    monkeypatch.setattr(api, "similar_products", down)

    page = client.get("/")
    assert page.status_code == 503 and page["Retry-After"] and b"Briefly unavailable" in page.content
    api_response = client.get(reverse("api:similar", args=[Product.objects.first().pk]))
    assert api_response.status_code == 503 and error(api_response)["code"] == "unavailable"
