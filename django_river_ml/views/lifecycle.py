"""Routes of a model's lifecycle (docs/lifecycle.md): versions, rollback, challengers, promotion."""

from __future__ import annotations

from django_river_ml import schema as openapi
from django_river_ml import serializers
from django_river_ml.exceptions import InvalidInput
from django_river_ml.names import RESERVED_NAMES
from django_river_ml.views.api import RiverAPIView

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def not_an_upload(request, name: str, word: str, fields: bool = True) -> None:
    """Refuse a body that is no call of this route, saying why.

    ``POST /model/<flavor>/<word>/`` is how a model named ``word`` would be uploaded, and it reaches the ``word``
    route of a model named like the flavor: a model in the body (a pickle, a JSON spec) must not be taken for a
    call of that route (``versions`` would answer 201). ``fields``: the route takes a JSON object (else no body).
    """
    if request.META.get("CONTENT_LENGTH") in (None, "", "0"):
        return
    content_type = request.content_type.split(";")[0].strip()
    if fields and content_type in FORM_TYPES:
        return
    if content_type == "application/json" and isinstance(request.data, dict) and (fields or not request.data):
        return
    takes = "a JSON object of fields" if fields else "no body"
    raise InvalidInput(f"POST {request.path} takes {takes}: it is the {word} route of model {name!r}. A model "
                       f"cannot be uploaded under the name {word!r} (reserved: {', '.join(sorted(RESERVED_NAMES))}).")


class VersionsView(RiverAPIView):
    """``/model/<name>/versions/``: GET lists the model's versions, POST keeps it as it is now as one."""

    @openapi.list_versions
    def get(self, request, name):
        return self.answer(serializers.VersionListSerializer, self.client.versions(name))

    @openapi.take_version
    def post(self, request, name):
        not_an_upload(request, name, "versions", fields=False)
        return self.answer(serializers.TakenVersionSerializer, self.client.take_version(name), status=201)


class RollbackView(RiverAPIView):
    @openapi.rollback
    def post(self, request, name):
        not_an_upload(request, name, "rollback")
        data = self.validated(serializers.RollbackSerializer)
        return self.answer(serializers.TakenVersionSerializer, self.client.rollback(name, data["version"]))


class ChallengersView(RiverAPIView):
    @openapi.challengers
    def get(self, request, name):
        return self.answer(serializers.ChallengersSerializer, self.client.challengers(name))


class ChallengerView(RiverAPIView):
    @openapi.withdraw_challenger
    def delete(self, request, name, challenger):
        self.client.withdraw_challenger(name, challenger)
        return self.answer(serializers.DeletedSerializer, {"message": f"Withdrew challenger {challenger} of {name}.",
                                                           "model": name})


class PromoteView(RiverAPIView):
    @openapi.promote
    def post(self, request, name):
        not_an_upload(request, name, "promote")
        data = self.validated(serializers.PromoteSerializer)
        return self.answer(serializers.PromotedSerializer, self.client.promote(name, data["challenger"]))
