"""The River API's bodies, requests and answers: each shape is declared once, here.

Requests are validated by these serializers. Their fields check the JSON shape (which fields,
which JSON types) and apply, as validators, the same checks DjangoClient applies for server code
(:mod:`django_river_ml.validation`, :func:`django_river_ml.names.validate_name`): each rule is
written once, in those functions. A batch's examples are checked by DjangoClient alone, in one
pass (10,000 examples are not walked twice).

Answers are DjangoClient's dicts rendered through the answer serializers (:func:`render`).

drf-spectacular infers the OpenAPI schema from both. What it cannot read from a field's class, a
constraint that comes from a setting or from the module that owns the rule (the most features, the
model-name pattern, an identifier's length), the field gives itself (:class:`Described`); a body
that is one of several shapes is a :class:`OneOf`, an object whose names the server picks a
:class:`Mapping`. Serializers are instantiated once (:func:`bound`): a request neither deep-copies
fields nor walks a batch's answers again.

A refused request answers as it always has (:func:`refusal`): every missing or mistyped field, in
DRF's words (``model: This field is required.``); once the shape is right, the first broken rule,
in DjangoClient's words (``Model names may use ...``).
"""

from __future__ import annotations

from typing import Any, Callable

from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail

from django_river_ml.access import MAX_GRANTS
from django_river_ml.exceptions import InvalidInput
from django_river_ml.flavors import FLAVORS
from django_river_ml.lifecycle import DETECTORS, POLICIES
from django_river_ml.names import NAME_PATTERN, validate_name
from django_river_ml.settings import river_settings
from django_river_ml.specs import CLASS_NAME, MAX_STEPS
from django_river_ml.validation import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_IDENTIFIER_LENGTH,
    MAX_NESTING,
    MAX_VERSION,
    validate_features,
    validate_idempotency_key,
    validate_identifier,
    validate_value,
)

#: The code of a validation error raised by one of the server's rules (see :func:`rule`).
RULE = "rule"


def rule(check: Callable, *args: Any) -> Callable[[Any], None]:
    """A field validator that applies one of the server's checks (which raise InvalidInput) to the value."""
    def validator(value):
        try:
            check(*args, value)
        except InvalidInput as error:
            raise serializers.ValidationError(error.message, code=RULE) from None

    validator.__name__ = getattr(check, "__name__", "rule")
    return validator


def _broken_rules(problems) -> bool:
    return isinstance(problems, list) and bool(problems) and all(getattr(p, "code", None) == RULE for p in problems)


def refusal(errors: dict) -> Exception:
    """What a refused request answers: its shape errors, all of them, else its first broken rule.

    That is the order the answers have always come in: the shape was checked by the
    serializer, the rules then by DjangoClient (in the order of the fields declared here).
    """
    shape = {field: problems for field, problems in errors.items() if not _broken_rules(problems)}
    if shape:
        return serializers.ValidationError(shape)
    return InvalidInput(str(next(iter(errors.values()))[0]))


_bound: dict[type, serializers.BaseSerializer] = {}


def bound(serializer_class: type[serializers.BaseSerializer]) -> serializers.BaseSerializer:
    """One instance of ``serializer_class``, kept: its fields are bound once, not deep-copied for every
    request. Validating and rendering read the fields and never change them, so threads may share it."""
    serializer = _bound.get(serializer_class)
    if serializer is None:
        serializer = _bound.setdefault(serializer_class, serializer_class())
    return serializer


def validate(serializer_class: type[serializers.BaseSerializer], data: Any) -> dict:
    """``data`` (a request body's fields) as ``serializer_class`` validates it, else its :func:`refusal`."""
    try:
        return bound(serializer_class).run_validation(data)
    except serializers.ValidationError as error:
        raise refusal(error.detail) from None


def render(serializer_class: type[serializers.BaseSerializer], result: Any) -> Any:
    """``result`` (what DjangoClient answered) as ``serializer_class`` declares it."""
    return bound(serializer_class).to_representation(result)


# Fields ----------------------------------------------------------------------------------------


class Described:
    """A field whose JSON schema needs more than drf-spectacular reads from its class.

    :meth:`openapi` gives what to add to it; it is read whenever a schema is made, so settings
    apply (``django_river_ml.schema`` applies it).
    """

    def openapi(self) -> dict:
        return {}


class JSONValueField(serializers.JSONField):
    """Any JSON value (one too deep for Python to encode again is refused here, not by a crash later)."""

    default_error_messages = {"too_deep": f"Value is nested more than {MAX_NESTING} levels deep."}

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except RecursionError:
            self.fail("too_deep")


class ModelNameField(Described, serializers.CharField):
    """A model's name (:func:`django_river_ml.names.validate_name`)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        kwargs.setdefault("help_text", "Name of the model.")
        super().__init__(**kwargs)
        self.validators.append(rule(validate_name))

    def openapi(self) -> dict:
        return {"pattern": f"^{NAME_PATTERN.pattern}$"}


class IdentifierField(Described, serializers.CharField):
    """A prediction's identifier (:func:`django_river_ml.validation.validate_identifier`)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)
        self.validators.append(rule(validate_identifier))

    def openapi(self) -> dict:
        return {"minLength": 1, "maxLength": MAX_IDENTIFIER_LENGTH, "pattern": "^[^\\u0000-\\u001f]*$"}


class IdempotencyKeyField(Described, serializers.CharField):
    """A learn's idempotency key (:func:`django_river_ml.validation.validate_idempotency_key`)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)
        self.validators.append(rule(validate_idempotency_key))

    def to_internal_value(self, data):
        if not isinstance(data, str):  # not a number made a string: a key is sent as it is kept
            self.fail("invalid")
        return super().to_internal_value(data)

    def openapi(self) -> dict:
        return {"pattern": f"^{IDEMPOTENCY_KEY_PATTERN.pattern}$"}


#: The header that may carry a learn's idempotency key instead of the body's field.
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: What an idempotency key does, for the schema's readers.
IDEMPOTENCY_WORDS = ("Learn once: a learn that repeats the key of one the model took (within IDEMPOTENCY_SECONDS) "
                     "learns nothing and answers again, with the first one's sequence.")


class FeaturesField(Described, JSONValueField):
    """An example's features (:func:`django_river_ml.validation.validate_features`)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", "Feature names to numbers, strings, booleans or null.")
        super().__init__(**kwargs)
        self.validators.append(rule(validate_features))

    def openapi(self) -> dict:
        value = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}], "nullable": True}
        return {"type": "object", "additionalProperties": value, "maxProperties": river_settings.MAX_FEATURES}


class TargetField(JSONValueField):
    """A ground truth or a label: any JSON value that fits the model's flavor
    (:func:`django_river_ml.validation.validate_value`, then the flavor's own check in DjangoClient)."""

    def __init__(self, name: str, **kwargs):
        super().__init__(**kwargs)
        self.validators.append(rule(validate_value, name))


class ExamplesField(Described, serializers.ListField):
    """A batch's examples, declared by ``child``; DjangoClient checks each (a batch is not walked twice)."""

    default_error_messages = {"not_a_list": "Must be a list of examples.", "empty": "Must have at least one example."}

    def to_internal_value(self, data):
        if not isinstance(data, list):
            self.fail("not_a_list")
        if not data:
            self.fail("empty")
        return data

    def openapi(self) -> dict:
        # Not maxItems: more than MAX_BATCH_ROWS examples is a 413 (too much), not a malformed request.
        return {"minItems": 1}


class Verbatim(serializers.ListField):
    """A list rendered as DjangoClient made it (declared by ``child``; a batch's 10,000 answers are not copied)."""

    def to_representation(self, data):
        return data


# Bodies that may take several shapes, and answers that are mappings --------------------------------


class OneOf(serializers.Serializer):
    """A body that is one of ``choices`` (serializers, or fields such as a list of them): ``oneOf`` in the
    schema, ``anyOf`` when one value may fit several (``overlapping``). Never validated or rendered itself."""

    choices: tuple = ()
    overlapping = False


class Mapping(serializers.Serializer):
    """An object whose names the server picks, each to a :meth:`value`: rendered as DjangoClient made it."""

    @staticmethod
    def value() -> serializers.Field:
        return serializers.JSONField()

    def to_representation(self, instance):
        return instance


# Requests ------------------------------------------------------------------------------------------


class ModelNameSerializer(serializers.Serializer):
    model = ModelNameField()


class PredictSerializer(ModelNameSerializer):
    features = FeaturesField()
    identifier = IdentifierField(
        required=False, allow_null=True,
        help_text="Identifier to store the prediction under for a later label (generated if omitted).",
    )


FEATURES_REQUIRED = ErrorDetail("This field is required (or give an identifier).", code="required")


class LearnSerializer(ModelNameSerializer):
    # In the order DjangoClient.learn checks them.
    identifier = IdentifierField(
        required=False, allow_null=True,
        help_text="A prediction's identifier: its stored prediction is scored against ground_truth.",
    )
    ground_truth = TargetField("ground_truth", required=False, allow_null=True, help_text="The target to learn.")
    features = FeaturesField(required=False, help_text="Feature names to numbers, strings, booleans or null; "
                                                       "optional when a known identifier is given.")
    idempotency_key = IdempotencyKeyField(help_text=f"{IDEMPOTENCY_WORDS} Or the Idempotency-Key header.")

    def to_internal_value(self, data):
        # A shape error, reported with the others before any broken rule (see refusal()).
        missing = "features" not in data and not data.get("identifier")
        try:
            attrs = super().to_internal_value(data)
        except serializers.ValidationError as error:
            if missing and all(_broken_rules(problems) for problems in error.detail.values()):
                raise serializers.ValidationError({"features": [FEATURES_REQUIRED]}) from None
            raise
        if missing:
            raise serializers.ValidationError({"features": [FEATURES_REQUIRED]})
        return attrs


class LabelSerializer(ModelNameSerializer):
    identifier = IdentifierField(help_text="The identifier the prediction was made with.")
    label = TargetField("label", help_text="The true label of the prediction with that identifier.")
    idempotency_key = IdempotencyKeyField(help_text=f"{IDEMPOTENCY_WORDS} Or the Idempotency-Key header.")


class LearnExampleSerializer(serializers.Serializer):
    """One example of a batch to learn."""

    features = FeaturesField(required=False, help_text="Optional when the example's identifier is pending.")
    ground_truth = TargetField("ground_truth", required=False, allow_null=True, help_text="The target to learn.")
    identifier = IdentifierField(required=False, allow_null=True,
                                 help_text="A pending prediction's identifier: it is scored and consumed.")
    idempotency_key = IdempotencyKeyField(help_text="This example's own key: learned once, however the batches that "
                                                    "carry it are cut.")


class PredictExampleSerializer(serializers.Serializer):
    """One example of a batch to predict."""

    features = FeaturesField()
    identifier = IdentifierField(required=False, allow_null=True,
                                 help_text="Keep the prediction for a label under this identifier.")


BATCH_SIZE_WORDS = "At most MAX_BATCH_ROWS examples (more is a 413)."


class LearnBatchSerializer(ModelNameSerializer):
    """Many examples, learned all or nothing (one entry of the model's log)."""

    examples = ExamplesField(child=LearnExampleSerializer(), help_text=BATCH_SIZE_WORDS)
    idempotency_key = IdempotencyKeyField(help_text=f"The batch's key. {IDEMPOTENCY_WORDS} Or the Idempotency-Key "
                                                    "header.")


class PredictBatchSerializer(ModelNameSerializer):
    """Many examples, predicted in order."""

    examples = ExamplesField(child=PredictExampleSerializer(), help_text=BATCH_SIZE_WORDS)


class LearnBodySerializer(OneOf):
    """One example, or a batch."""

    choices = (LearnSerializer, LearnBatchSerializer)
    overlapping = True  # a batch also fits an example whose features are left out


class PredictBodySerializer(OneOf):
    """One example, or a batch."""

    choices = (PredictSerializer, PredictBatchSerializer)


class AccessSerializer(serializers.Serializer):
    """``PUT /model/access/<name>/``: a field left out keeps its value."""

    owner = serializers.CharField(required=False, trim_whitespace=False,
                                  help_text="The user who owns the model (only the owner and staff may change it).")
    users = serializers.ListField(child=serializers.CharField(trim_whitespace=False), required=False,
                                  max_length=MAX_GRANTS, help_text="Names of the users the model is shared with.")
    groups = serializers.ListField(child=serializers.CharField(trim_whitespace=False), required=False,
                                   max_length=MAX_GRANTS, help_text="Names of the groups the model is shared with.")


class ClassNameField(Described, serializers.CharField):
    def openapi(self) -> dict:
        return {"pattern": f"^{CLASS_NAME.pattern}$"}


class ModelSpecStepSerializer(serializers.Serializer):
    """A public river class and its parameters; a parameter may itself be a step."""

    params = serializers.DictField(required=False, allow_null=True, help_text=(
        "The class's parameters (a value that is a step is built the same way)."))

    def get_fields(self):  # "class" is a keyword: it cannot be declared as an attribute
        return {"class": ClassNameField(help_text="A river class relative to `river`, e.g. "
                                                  "`preprocessing.StandardScaler`."), **super().get_fields()}


class ModelSpecSerializer(OneOf):
    """A JSON model spec (read by django_river_ml.specs): a list of steps is a pipeline, one step one estimator."""

    choices = (serializers.ListField(child=ModelSpecStepSerializer(), min_length=1, max_length=MAX_STEPS),
               ModelSpecStepSerializer)


# Answers ---------------------------------------------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    message = serializers.CharField(help_text="What went wrong, for people.")
    row = serializers.IntegerField(required=False, min_value=0,
                                   help_text="In a batch: the index of the example that was refused.")


class ServiceInfoSerializer(serializers.Serializer):
    baseurl = serializers.CharField(help_text="The site's base URL (DOMAIN_URL, else taken from the request).")
    id = serializers.CharField()
    status = serializers.ChoiceField(choices=["running"])
    name = serializers.CharField()
    description = serializers.CharField()
    documentationUrl = serializers.CharField()  # noqa: N815 - the published protocol's spelling
    prefix = serializers.CharField(help_text="URL_PREFIX: the routes live under /<prefix>/.", allow_blank=True)
    storage = serializers.CharField(help_text="The store: `shelve`, `redis`, `redis-cluster`, or the name a custom store "
                                              "gives itself.")
    river_version = serializers.CharField()
    version = serializers.CharField(help_text="The django-river-ml version.")


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="A JWT: send it as Authorization: Bearer <token>.")
    expires_in = serializers.IntegerField(help_text="Seconds.")
    issued_at = serializers.IntegerField(help_text="Unix time.")


class UploadedSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="The model's name: the one chosen, or a generated adjective-noun name.")
    challenger_of = serializers.CharField(required=False, help_text="The model it challenges, when it is a challenger.")


class LearnResultSerializer(serializers.Serializer):
    model = serializers.CharField()
    sequence = serializers.IntegerField(help_text="Position of this learn in the model's log.")
    prediction = serializers.JSONField(
        required=False, help_text="The model's prediction for the features, made before learning (when one was made).",
    )
    duplicate = serializers.BooleanField(required=False, help_text=(
        "true when the idempotency key was a learn's the model took: nothing was learned, sequence is that learn's."))


class LearnedBatchSerializer(serializers.Serializer):
    model = serializers.CharField()
    learned = serializers.IntegerField(help_text="How many examples were learned: all of the batch.")
    sequence = serializers.IntegerField(help_text="Position of the batch in the model's log (from which the model has "
                                                  "learned every example of it).")
    duplicates = serializers.IntegerField(required=False, min_value=1, help_text=(
        "How many examples an earlier learn with their idempotency keys (or the batch's) had learned: left out."))


PREDICTION_WORDS = ("A number (regression, anomaly score), {label: probability} (binary, multiclass), a cluster id, "
                    "or what a custom model's predict_one gives; null when the model has none.")


class PredictionSerializer(serializers.Serializer):
    model = serializers.CharField()
    prediction = serializers.JSONField(help_text=PREDICTION_WORDS)


class IdentifiedPredictionSerializer(PredictionSerializer):
    identifier = serializers.CharField(help_text="Label the prediction later with this identifier.")


class BatchPredictionSerializer(serializers.Serializer):
    prediction = serializers.JSONField(help_text=PREDICTION_WORDS)
    identifier = serializers.CharField(required=False, help_text="The example's identifier, when it gave one: "
                                                                 "the prediction is kept for its label.")


class PredictedBatchSerializer(serializers.Serializer):
    model = serializers.CharField()
    predictions = Verbatim(child=BatchPredictionSerializer(), help_text="One for each example, in order.")


class LearnOutcomeSerializer(OneOf):
    """What a learn answers: one example's, or a batch's."""

    choices = (LearnResultSerializer, LearnedBatchSerializer)
    overlapping = True  # a batch's answer also fits a learn's


class PredictOutcomeSerializer(OneOf):
    """A prediction without an identifier, or a batch's predictions."""

    choices = (PredictionSerializer, PredictedBatchSerializer)


class LabelResultSerializer(serializers.Serializer):
    model = serializers.CharField()
    identifier = serializers.CharField()
    sequence = serializers.IntegerField(help_text="Position of this learn in the model's log.")
    duplicate = serializers.BooleanField(required=False, help_text=(
        "true when the idempotency key was a label's the model took: nothing was learned, sequence is that label's."))


def _metric_words() -> str:
    kept = [f"{', '.join(factory.__name__ for factory in flavor.metric_factories)} ({name})"
            for name, flavor in FLAVORS.items() if flavor.metric_factories]
    return "; ".join(kept)


class MetricsSerializer(Mapping):
    @staticmethod
    def value() -> serializers.Field:
        return serializers.FloatField(allow_null=True)


MetricsSerializer.__doc__ = (
    f"Metric name to value (null while it is not defined). The flavor's metrics: {_metric_words()}; none for the "
    "other flavors. A model that gives no probabilities has no LogLoss or CrossEntropy."
)


class ModelParametersSerializer(Mapping):
    """The model's parameters, keyed by step class name (a pipeline has one key a step)."""


class CallStatsSerializer(serializers.Serializer):
    n_calls = serializers.IntegerField(min_value=0)
    mean_duration = serializers.IntegerField(min_value=0, help_text="Nanoseconds.")
    mean_duration_human = serializers.CharField()
    ewm_duration = serializers.IntegerField(min_value=0, help_text="Nanoseconds, weighted by STATS_EWM_ALPHA.")
    ewm_duration_human = serializers.CharField()
    p50_duration = serializers.IntegerField(min_value=0, help_text="Nanoseconds: the median, from the latency "
                                                                   "histogram of every worker (0 without calls).")
    p50_duration_human = serializers.CharField()
    p95_duration = serializers.IntegerField(min_value=0, help_text="Nanoseconds: the 95th percentile.")
    p95_duration_human = serializers.CharField()
    p99_duration = serializers.IntegerField(min_value=0, help_text="Nanoseconds: the 99th percentile.")
    p99_duration_human = serializers.CharField()
    rate_per_second = serializers.FloatField(min_value=0, help_text="Calls per second over the last minute (since "
                                                                    "the upload, for a model younger than that).")


class StatsSerializer(serializers.Serializer):
    learn = CallStatsSerializer()
    predict = CallStatsSerializer()
    label = CallStatsSerializer()
    drift = CallStatsSerializer(help_text="Drifts the model's detector found (docs/lifecycle.md): n_calls counts them, "
                                          "rate_per_second is per second over the last minute (durations are 0).")


class ModelListSerializer(serializers.Serializer):
    models = serializers.ListField(child=serializers.CharField())


class DeletedSerializer(serializers.Serializer):
    message = serializers.CharField()
    model = serializers.CharField()


class AccessResultSerializer(serializers.Serializer):
    owner = serializers.CharField(allow_null=True, help_text="The owner's user name; null when the model has none "
                                                             "(uploaded by server code or with authentication off).")
    users = serializers.ListField(child=serializers.CharField(), help_text="Users the model is shared with.")
    groups = serializers.ListField(child=serializers.CharField(), help_text="Groups the model is shared with.")


# The lifecycle (docs/lifecycle.md) ----------------------------------------------------------------


class VersionField(serializers.IntegerField):
    """A version number (:func:`django_river_ml.validation.validate_version`): a JSON whole number, or ASCII
    digits in a query (not ``1.0``, nor ``"１"``, which Python's ``int`` would take)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_VERSION)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if isinstance(data, (float, bool)) or (isinstance(data, str) and not (data.isascii() and data.isdigit())):
            self.fail("invalid")
        return super().to_internal_value(data)


class QuerySerializer(serializers.Serializer):
    """Options in a query string: one given empty is refused, not taken for absent (``?challenger_of=`` must
    not upload an ordinary model in the champion's place)."""

    def to_internal_value(self, data):
        empty = [name for name in self.fields if name in data and data.get(name) == ""]
        if empty:
            raise serializers.ValidationError({empty[0]: "This option is empty: leave it out, or give a value."})
        return super().to_internal_value(data)


class DownloadQuerySerializer(QuerySerializer):
    version = VersionField(required=False, help_text="Download this version instead of the model as it is now.")


class RollbackSerializer(serializers.Serializer):
    version = VersionField(help_text="The version to go on from (see the model's versions).")


class PromoteSerializer(serializers.Serializer):
    challenger = ModelNameField(help_text="The challenger to serve in the model's place.")


class UploadOptionsSerializer(QuerySerializer):
    """An upload's query: as a challenger of another model, and the model's drift detection."""

    challenger_of = ModelNameField(required=False, help_text=(
        "Upload the model as a challenger of this one (same flavor): it learns every example that model learns, "
        "is scored on them, and serves only once promoted."))
    drift_detector = serializers.ChoiceField(
        choices=[*DETECTORS, "none"], required=False,
        help_text="The river.drift detector fed with the model's errors (default: DRIFT_DETECTOR); none for none.")
    drift_policy = serializers.ChoiceField(
        choices=POLICIES, required=False,
        help_text="What a drift does besides its event: none, reset (a fresh copy of the model learns on) or promote "
                  "(its best challenger serves). Default: DRIFT_POLICY.")


VERSION_KINDS = ("upload", "snapshot", "manual", "rollback", "promote", "before-promote", "drift")


class VersionSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, allow_null=True, help_text=(
        "Its number, from 1 (the upload); null in an answer only if the snapshot could not be written."))
    sequence = serializers.IntegerField(min_value=0, help_text="The log position it holds the model at.")
    created = serializers.FloatField(required=False, help_text="Unix time.")
    kind = serializers.ChoiceField(choices=VERSION_KINDS, required=False, help_text=(
        "Why it was written: upload, snapshot (routine), manual (asked for), rollback, promote, before-promote (the "
        "champion a promotion replaced), drift (after a drift policy acted)."))
    metrics = MetricsSerializer(required=False, help_text="The model's metrics at that point.")
    from_version = serializers.IntegerField(required=False, help_text="A rollback's: the version it went back to.")
    challenger = serializers.CharField(required=False, help_text="A promotion's: the challenger that now serves.")


class VersionListSerializer(serializers.Serializer):
    model = serializers.CharField()
    versions = VersionSerializer(many=True, help_text="Oldest first; those VERSIONS_KEPT and the others keep.")


class TakenVersionSerializer(VersionSerializer):
    model = serializers.CharField()


class PromotedSerializer(TakenVersionSerializer):
    """A promotion: the version written right after it."""


class DriftSerializer(serializers.Serializer):
    detector = serializers.CharField(allow_null=True, help_text="The river.drift detector (null: none).")
    policy = serializers.ChoiceField(choices=POLICIES)
    detections = serializers.IntegerField(min_value=0, help_text="Drifts found since the upload.")
    last_at = serializers.IntegerField(allow_null=True, help_text="The log position of the last one.")


class ChallengerSerializer(serializers.Serializer):
    name = serializers.CharField()
    metrics = MetricsSerializer(help_text="Scored on the examples it learned beside its champion.")
    learned = serializers.IntegerField(min_value=0, help_text="Examples learned since it joined.")
    error = serializers.CharField(allow_null=True, help_text="Why it stopped learning (it raised), or null.")


class ChallengersSerializer(serializers.Serializer):
    model = serializers.CharField()
    sequence = serializers.IntegerField(help_text="The log position these metrics are at.")
    metrics = MetricsSerializer(help_text="The champion's metrics.")
    challengers = ChallengerSerializer(many=True)
    drift = DriftSerializer(allow_null=True)

