from django.apps import AppConfig

#: django-eventstream's settings this app fills in when the site has not set them.
EVENTSTREAM_DEFAULTS = {
    "EVENTSTREAM_STORAGE_CLASS": "django_river_ml.streams.adapters.EventStorage",
    "EVENTSTREAM_CHANNELMANAGER_CLASS": "django_river_ml.streams.adapters.ChannelManager",
}


class DjangoRiverMLConfig(AppConfig):
    name = "django_river_ml"
    verbose_name = "Django River ML"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.conf import settings
        from django.core.signals import request_started, setting_changed

        from django_river_ml import checks, signals  # noqa: F401 - checks register themselves
        from django_river_ml.events import river_event
        from django_river_ml.sandbox import prewarm
        from django_river_ml.settings import river_settings
        from django_river_ml.streams import publisher, reset_streams

        signals.connect()
        request_started.connect(prewarm, dispatch_uid="django_river_ml.sandbox.prewarm")
        for name, value in EVENTSTREAM_DEFAULTS.items():
            if not hasattr(settings, name):
                setattr(settings, name, value)
        served = set(river_settings.API_VIEWS_ENABLED)
        if not served or served & {"stream_events", "stream_metrics"}:  # else no one would read the events
            river_event.connect(publisher.on_river_event, dispatch_uid="django_river_ml.streams")
        setting_changed.connect(reset_streams, dispatch_uid="django_river_ml.streams.reset")
