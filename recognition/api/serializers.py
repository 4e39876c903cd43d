"""DRF serializers of enrolment photos and 1:N identification."""

from __future__ import annotations

from rest_framework import serializers

from recognition.models import EnrollmentPhoto


class EnrollmentPhotoSerializer(serializers.ModelSerializer):
    """A photo and its quality verdict (the image itself is not served by the API)."""

    class Meta:
        model = EnrollmentPhoto
        fields = [
            "id",
            "person",
            "status",
            "quality_reason",
            "quality_message",
            "quality",
            "box",
            "duplicate_of",
            "own_similarity",
            "other_similarity",
            "uploaded_at",
        ]
        read_only_fields = fields


class PhotoUploadSerializer(serializers.Serializer):
    image = serializers.FileField(help_text="JPEG or PNG with exactly one face.")


class IdentifyRequestSerializer(serializers.Serializer):
    image = serializers.FileField(help_text="Picture with a face (the largest usable face is used).")
    limit = serializers.IntegerField(min_value=1, max_value=20, default=5, help_text="How many people to rank.")


class IdentifyMatchSerializer(serializers.Serializer):
    person_id = serializers.IntegerField()
    name = serializers.CharField()
    external_id = serializers.CharField(allow_null=True)
    similarity = serializers.FloatField(help_text="Cosine similarity, -1..1 (higher is closer).")
    above_threshold = serializers.BooleanField(
        help_text="Similarity reaches the calibrated threshold of the model (a door may override it)."
    )


class IdentifyResponseSerializer(serializers.Serializer):
    model_version = serializers.CharField()
    threshold = serializers.FloatField(allow_null=True)
    box = serializers.ListField(child=serializers.FloatField(), help_text="Face box x1, y1, x2, y2 (pixels).")
    quality = serializers.DictField()
    matches = IdentifyMatchSerializer(many=True)
