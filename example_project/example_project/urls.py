from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    # The site's front page is the app's dashboard (/api/dashboard/ with the default URL_PREFIX).
    path("", RedirectView.as_view(pattern_name="django_river_ml:dashboard"), name="home"),
    # Signing in with a password, for the dashboard when authentication is on (LOGIN_URL).
    path("accounts/login/", auth_views.LoginView.as_view(template_name="example_project/login.html"), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("django_river_ml.urls")),
]
