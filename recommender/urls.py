from django.urls import path

from . import views

app_name = "recommender"

urlpatterns = [
    path("api/recommender/status", views.index_status, name="index-status"),
]
