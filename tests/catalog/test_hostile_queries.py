import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db

LIST = reverse("catalog:product-list")
ADMIN_LIST = reverse("admin:catalog_product_changelist")


@pytest.mark.parametrize("param", ["q", "gender", "category", "type", "colour"])
def test_nul_in_a_shop_parameter_is_ignored(client, catalogue, param):
    response = client.get(f"{LIST}?{param}=%00")

    assert response.status_code == 200
    assert response.context["paginator"].count == 60


def test_nul_inside_a_value_is_stripped(client, catalogue):
    response = client.get(f"{LIST}?gender=Wo%00men&q=%00")

    assert response.status_code == 200
    products = response.context["paginator"].object_list
    assert products and all(product.gender == "Women" for product in products)


@pytest.mark.parametrize("query", ["q=%00", "gender__exact=%00"])
def test_nul_in_admin_product_list_is_not_a_server_error(staff_client, catalogue, query):
    assert staff_client.get(f"{ADMIN_LIST}?{query}").status_code == 200


def test_admin_search_and_filter_strip_nul(staff_client, catalogue):
    response = staff_client.get(f"{ADMIN_LIST}?gender__exact=Wo%00men&q=sk%00irt")

    assert response.status_code == 200
    results = list(response.context["cl"].result_list)
    assert "10000" in {product.sku for product in results}
    assert all(product.gender == "Women" and "skirt" in product.name.lower() for product in results)
