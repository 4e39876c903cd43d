"""Enrolment UI URLs (mounted at ``/enrol/``)."""

from django.urls import path

from recognition import views

app_name = "recognition"

urlpatterns = [
    path("", views.enrol_index, name="enrol_index"),
    path("people/<int:pk>/", views.enrol_person, name="enrol_person"),
    path("photos/<int:pk>/crop.jpg", views.photo_crop, name="photo_crop"),
    path("photos/<int:pk>/image", views.photo_image, name="photo_image"),
    path("photos/<int:pk>/accept/", views.photo_accept_view, name="photo_accept"),
    path("photos/<int:pk>/reject/", views.photo_reject_view, name="photo_reject"),
    path("import/", views.bulk_import, name="bulk_import"),
    path("import/upload/", views.bulk_import_upload, name="bulk_import_upload"),
    path("import/<str:job>/start/", views.bulk_import_start, name="bulk_import_start"),
    path("import/<str:job>/status/", views.bulk_import_status, name="bulk_import_status"),
]
