"""Request bodies of the River API, validated by DRF.

Serializers check shape (which fields, which JSON types); the meaning of the
values (names, features, targets for the flavor) is checked by DjangoClient so
server code calling it directly gets the same checks.
"""

from __future__ import annotations

from rest_framework import serializers

from django_river_ml.access import MAX_GRANTS
from django_river_ml.validation import MAX_NESTING, nested_deeper_than


class JSONValueField(serializers.JSONField):
    """Any JSON value, nested at most MAX_NESTING levels (deeper ones overflow Python's recursion later)."""

    default_error_messages = {"too_deep": f"Value is nested more than {MAX_NESTING} levels deep."}

    def to_internal_value(self, data):
        try:
            value = super().to_internal_value(data)
        except RecursionError:
            self.fail("too_deep")
        if nested_deeper_than(value, MAX_NESTING):
            self.fail("too_deep")
        return value


class ModelNameSerializer(serializers.Serializer):
    model = serializers.CharField(trim_whitespace=False, help_text="Name of the model.")


class PredictSerializer(ModelNameSerializer):
    features = JSONValueField(help_text="Feature names to numbers, strings, booleans or null.")
    identifier = serializers.CharField(
        required=False, allow_null=True, trim_whitespace=False,
        help_text="Identifier to store the prediction under for a later label (generated if omitted).",
    )


class LearnSerializer(ModelNameSerializer):
    features = JSONValueField(required=False, help_text="Optional when a known identifier is given.")
    ground_truth = JSONValueField(required=False, allow_null=True, help_text="The target to learn.")
    identifier = serializers.CharField(
        required=False, allow_null=True, trim_whitespace=False,
        help_text="A prediction's identifier: its stored prediction is scored against ground_truth.",
    )

    def validate(self, attrs):
        if "features" not in attrs and not attrs.get("identifier"):
            raise serializers.ValidationError({"features": "This field is required (or give an identifier)."})
        return attrs


class ExamplesField(serializers.Field):
    """A list of examples; each is checked by DjangoClient (a batch of 10,000 is not walked twice)."""

    default_error_messages = {"not_a_list": "Must be a list of examples.", "empty": "Must have at least one example."}

    def to_internal_value(self, data):
        if not isinstance(data, list):
            self.fail("not_a_list")
        if not data:
            self.fail("empty")
        return data

    def to_representation(self, value):  # pragma: no cover - request only
        return value


class BatchSerializer(ModelNameSerializer):
    examples = ExamplesField(help_text="The examples, each {features, ground_truth?, identifier?}; at most "
                                       "MAX_BATCH_ROWS.")


class LabelSerializer(ModelNameSerializer):
    identifier = serializers.CharField(trim_whitespace=False)
    label = JSONValueField(help_text="The true label of the prediction with that identifier.")


class AccessSerializer(serializers.Serializer):
    """``PUT /model/access/<name>/``: a field left out keeps its value."""

    owner = serializers.CharField(required=False, trim_whitespace=False,
                                  help_text="The user who owns the model (only the owner and staff may change it).")
    users = serializers.ListField(child=serializers.CharField(trim_whitespace=False), required=False,
                                  max_length=MAX_GRANTS, help_text="Names of the users the model is shared with.")
    groups = serializers.ListField(child=serializers.CharField(trim_whitespace=False), required=False,
                                   max_length=MAX_GRANTS, help_text="Names of the groups the model is shared with.")
