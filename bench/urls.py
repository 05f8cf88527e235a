"""The example site's routes, and ``/bench/hello/``: a minimal authenticated DRF JSON view (the framework floor)."""

from django.urls import path
from rest_framework.authentication import TokenAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from example_project.urls import urlpatterns as site_urlpatterns


class HelloView(APIView):
    """What every River API request costs besides the River API: DRF, a token look-up, a JSON body in and out."""

    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]

    def post(self, request):
        return Response({"model": request.data.get("model"), "prediction": 1.0})


urlpatterns = [path("bench/hello/", HelloView.as_view(), name="bench_hello"), *site_urlpatterns]
