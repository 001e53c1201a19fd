from django.urls import path

from . import views

app_name = "recommender"

# Included before the catalogue's URLs: this product page is the catalogue's, plus similar items.
urlpatterns = [
    path("products/<int:pk>/<slug:slug>/", views.ProductWithSimilarItemsView.as_view(), name="product-detail"),
    path("search/photo/", views.visual_search, name="visual-search"),
    path("api/products/<int:pk>/similar", views.api_similar, name="api-similar"),
    path("api/search", views.api_search, name="api-search"),
    path("api/recommender/status", views.index_status, name="index-status"),
]
