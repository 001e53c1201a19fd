from django.urls import path

from . import views

app_name = "catalog"

urlpatterns = [
    path("", views.ProductListView.as_view(), name="product-list"),
    path("products/<int:pk>/", views.ProductDetailView.as_view(), name="product-detail-short"),
    path("products/<int:pk>/<slug:slug>/", views.ProductDetailView.as_view(), name="product-detail"),
]
