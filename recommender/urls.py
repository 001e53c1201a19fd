from django.urls import path

from . import views

app_name = "recommender"

urlpatterns = [
    path("search/photo/", views.visual_search, name="visual-search"),
]
