"""The Content-Security-Policy header on pages and API responses (the browser tests check that pages obey it)."""

import pytest

pytestmark = pytest.mark.django_db


def directives(response) -> dict[str, set[str]]:
    policy = response.headers["Content-Security-Policy"]
    return {name: set(values) for name, *values in (part.split() for part in policy.split(";") if part.strip())}


def test_the_shop_grid_has_a_strict_policy(client):
    response = client.get("/")
    assert response.status_code == 200
    policy = directives(response)
    assert policy["default-src"] == {"'self'"}
    assert policy["script-src"] == {"'self'"}
    assert policy["img-src"] == {"'self'", "data:", "blob:"}
    assert policy["object-src"] == {"'none'"}
    assert policy["frame-ancestors"] == {"'none'"}
    assert policy["form-action"] == {"'self'"}
    assert policy["base-uri"] == {"'self'"}
    assert "'self'" in policy["style-src"]


def test_an_api_response_has_the_policy_too(client):
    response = client.get("/api/products/999999/similar")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    policy = directives(response)
    assert policy["default-src"] == {"'self'"}
    assert policy["script-src"] == {"'self'"}
    assert policy["frame-ancestors"] == {"'none'"}
