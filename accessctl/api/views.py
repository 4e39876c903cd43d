"""The domain's REST API v1 for integrators (thin DRF adapters; URLs in ``accessctl/api/urls.py``), and
what every app's API views share (:class:`ApiMixin`; ``recognition/api``, ``devices/api``).

Authentication: ``Authorization: Bearer <prefix>.<secret>`` (API tokens with scopes, see
``accessctl/tokens.py``) or a staff session (Django model permissions). Errors are
``{"error": {"code", "message", "details"?}}`` (``accessctl/api/exceptions.py``), also for a path under
``/api/`` that names no endpoint (``api_not_found``); ``GET /api/v1/`` lists the endpoints. A list
refuses query parameters it does not know and names every bad one (``accessctl/api/filters.py``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.db import IntegrityError, transaction
from django.db.models import Prefetch
from django.http import HttpResponsePermanentRedirect
from django.urls import Resolver404, URLResolver, get_resolver, get_urlconf, resolve, reverse
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions as drf_exceptions
from rest_framework import status, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import action
from rest_framework.pagination import CursorPagination, LimitOffsetPagination
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from accessctl.alarms import alarm_acknowledge
from accessctl.api import filters, serializers
from accessctl.api.authentication import ApiTokenAuthentication
from accessctl.api.permissions import ApiUser, ScopedAutoSchema, ScopeOrModelPermission
from accessctl.api.throttling import ApiTokenRateThrottle
from accessctl.exceptions import NotFound
from accessctl.models import (
    AccessEvent,
    AccessGroup,
    Alarm,
    ApiToken,
    Area,
    Door,
    Person,
    Schedule,
    WebhookDelivery,
    WebhookSubscription,
)
from accessctl.passback import area_presence_reset
from accessctl.privacy.erasure import person_erase
from accessctl.webhooks import (
    EventType,
    person_webhook_payload,
    webhook_dispatch,
    webhook_redeliver,
    webhook_secret_generate,
)

logger = logging.getLogger(__name__)

Scope = ApiToken.Scope


class ApiPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


class EventCursorPagination(CursorPagination):
    """Stable paging through a log that grows while you read it: newest first."""

    ordering = ("-occurred_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request: Request) -> Any:
        """DRF checks the cursor's structure only; its position (an ``occurred_at``) is checked here,
        so a forged one is "Invalid cursor" rather than a database error (500)."""
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                valid = parse_datetime(cursor.position) is not None
            except ValueError:
                valid = False
            if not valid:
                raise drf_exceptions.NotFound(self.invalid_cursor_message)
        return cursor


class ApiMixin:
    """What every API view shares: token or session auth, fail-closed scopes, per-token rate limit.

    Subclasses declare ``read_scope`` / ``write_scope`` (and ``action_scopes`` for extra actions);
    a view that declares none is closed to tokens.
    """

    authentication_classes = [ApiTokenAuthentication, SessionAuthentication]
    permission_classes = [ScopeOrModelPermission]
    throttle_classes = [ApiTokenRateThrottle]
    pagination_class = ApiPagination
    # Unknown query parameters are refused; every bad one is reported (accessctl/api/filters.py).
    filter_backends = [filters.ApiFilterBackend]
    schema = ScopedAutoSchema()
    # OPTIONS answers 405: the OpenAPI schema describes the API (and DRF's metadata introspection
    # would call get_object() on extra actions).
    metadata_class = None
    read_scope: str | None = None
    write_scope: str | None = None
    action_scopes: dict[str, str] = {}

    # The login wall (LoginRequiredMiddleware) would redirect API clients to the login page;
    # DRF authenticates and authorises these views itself.
    @login_not_required
    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return super().dispatch(request, *args, **kwargs)  # type: ignore[misc]


class ApiModelViewSet(ApiMixin, viewsets.ModelViewSet):
    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]


class ApiReadOnlyViewSet(ApiMixin, viewsets.ReadOnlyModelViewSet):
    pass


# --- the root and unknown paths ------------------------------------------------------------------

_URL_KWARG = re.compile(r"\(\?P<(\w+)>[^)]*\)")


class ApiRootView(ApiMixin, APIView):
    """``GET /api/v1/``: every endpoint by name (DRF's API root format), with the schema and its docs.

    Open to whoever can use some endpoint (``ApiUser``: any valid token, whatever its scopes, or a
    signed-in user with an API permission): it lists URLs, no data. A nested collection is given as
    a URI template (``people/{person_pk}/photos/``).

    Each app mounts its own ``api/urls.py`` at the API's prefix (``accessctl/project/urls.py``); the
    root lists what every one of them declares: its ``router``'s collections and its ``root_links``
    (name -> URL name). It finds them in the URL configuration, so it imports no app's API.
    """

    permission_classes = [ApiUser]

    @extend_schema(
        operation_id="api_root",
        summary="List the API's endpoints",
        description="Name -> URL of every collection, `identify`, the OpenAPI schema and its viewers. "
        "Any valid token (whatever its scopes) or a signed-in user with an API permission.",
        tags=["api"],
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description="endpoint name -> absolute URL")},
    )
    def get(self, request: Request) -> Response:
        root_path = reverse("api-root")
        root = request.build_absolute_uri(root_path)
        links: dict[str, str] = {}
        for urlconf in api_urlconfs(root_path):
            router: SimpleRouter | None = getattr(urlconf, "router", None)
            for prefix, _viewset, _basename in router.registry if router else []:
                name = _URL_KWARG.sub(r"{\1}", prefix)
                links[name] = f"{root}{name}/"
            for name, url_name in getattr(urlconf, "root_links", {}).items():
                links[name] = request.build_absolute_uri(reverse(url_name))
        return Response(links)


def api_urlconfs(root_path: str) -> list[Any]:
    """The URL modules included at the API's prefix (``root_path``, e.g. ``/api/v1/``), in order."""
    found = []
    for entry in get_resolver(get_urlconf()).url_patterns:
        if isinstance(entry, URLResolver) and f"/{entry.pattern}" == root_path:
            found.append(entry.urlconf_module)
    return found


@extend_schema(exclude=True)
class ApiNotFoundView(ApiMixin, APIView):
    """Any path under ``/api/`` that names no endpoint: a JSON 404 in the API's error format.

    Mounted last in ``accessctl/project/urls.py``. Authenticated like the rest of the API (strangers get
    401/403, a session's POST needs its CSRF token). A path that exists with a trailing slash is
    redirected for GET and HEAD, as Django's ``APPEND_SLASH`` would; other methods are told the path.
    """

    permission_classes = [ApiUser]
    renderer_classes = [JSONRenderer]  # JSON also for a browser: no browsable-API page for a wrong path

    @login_not_required  # the login wall would redirect API clients to the login page
    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        if request.method in ("GET", "HEAD") and self._slash_path_exists(request):
            return HttpResponsePermanentRedirect(request.get_full_path(force_append_slash=True))
        return super().dispatch(request, *args, **kwargs)

    @staticmethod
    def _slash_path_exists(request: Any) -> bool:
        if request.path_info.endswith("/"):
            return False
        try:
            match = resolve(f"{request.path_info}/")
        except Resolver404:
            return False
        return match.url_name != "api-not-found"

    def not_found(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        path = request.path
        shown = path if len(path) <= 200 else f"{path[:200]}…"
        if self._slash_path_exists(request):
            raise NotFound(f"No API endpoint at {shown}: the path ends with a slash ({shown}/).")
        raise NotFound(f"No API endpoint at {shown}. The endpoints are listed at {reverse('api-root')}.")

    get = post = put = patch = delete = head = options = not_found


# --- people ------------------------------------------------------------------------------------

_EXTERNAL_ID = OpenApiParameter("external_id", str, OpenApiParameter.PATH, description="HR identifier.")


@extend_schema_view(
    list=extend_schema(summary="List people", tags=["people"]),
    retrieve=extend_schema(summary="Get a person", tags=["people"]),
    create=extend_schema(summary="Create a person", tags=["people"]),
    update=extend_schema(summary="Replace a person", tags=["people"]),
    partial_update=extend_schema(summary="Update a person", tags=["people"]),
    destroy=extend_schema(
        summary="Erase a person",
        description="Deletes photos, embeddings and face crops; access events keep only a pseudonym.",
        tags=["people"],
    ),
)
class PersonViewSet(ApiModelViewSet):
    queryset = Person.objects.order_by("name", "id")
    serializer_class = serializers.PersonSerializer
    filterset_class = filters.PersonFilter
    read_scope = Scope.PEOPLE_READ
    write_scope = Scope.PEOPLE_WRITE
    session_permissions = {"by_external_id:PUT": ["accessctl.add_person", "accessctl.change_person"]}

    def perform_create(self, serializer: BaseSerializer) -> None:
        with transaction.atomic():
            person = serializer.save()
            webhook_dispatch(EventType.PERSON_CREATED, person_webhook_payload(person))

    def perform_update(self, serializer: BaseSerializer) -> None:
        with transaction.atomic():
            person = serializer.save()
            webhook_dispatch(EventType.PERSON_UPDATED, person_webhook_payload(person))

    def perform_destroy(self, instance: Person) -> None:
        # Right to erasure: photos, embeddings, files and snapshots go, events keep only the pseudonym;
        # the service records the erasure and sends ``person.deleted``.
        person_erase(person=instance, actor=self.request.user)

    @extend_schema(
        methods=["GET"],
        summary="Get a person by HR identifier",
        tags=["people"],
        parameters=[_EXTERNAL_ID],
        responses=serializers.PersonSerializer,
    )
    @extend_schema(
        methods=["PUT"],
        summary="Create or replace a person by HR identifier (HR sync upsert)",
        description="201 when the person was created, 200 when an existing one was replaced.",
        tags=["people"],
        parameters=[_EXTERNAL_ID],
        request=serializers.PersonUpsertSerializer,
        responses={200: serializers.PersonSerializer, 201: serializers.PersonSerializer},
    )
    @action(
        detail=False,
        methods=["get", "put"],
        url_path=r"by-external-id/(?P<external_id>[^/]{1,100})",
        url_name="by-external-id",
        filterset_class=None,
        pagination_class=None,
    )
    def by_external_id(self, request: Request, external_id: str) -> Response:
        if request.method == "GET":
            person = Person.objects.filter(external_id=external_id).first()
            if person is None:
                raise NotFound(f"No person with external_id {external_id!r}.")
            return Response(serializers.PersonSerializer(person).data)
        for attempt in range(2):
            try:
                with transaction.atomic():
                    existing = Person.objects.select_for_update().filter(external_id=external_id).first()
                    serializer = serializers.PersonUpsertSerializer(existing, data=request.data)
                    serializer.is_valid(raise_exception=True)
                    person = serializer.save(external_id=external_id)
                    event = EventType.PERSON_UPDATED if existing else EventType.PERSON_CREATED
                    webhook_dispatch(event, person_webhook_payload(person))
            except IntegrityError:
                if attempt:
                    raise
                continue  # a concurrent upsert created this external_id first: update that one
            code = status.HTTP_200_OK if existing else status.HTTP_201_CREATED
            return Response(serializers.PersonSerializer(person).data, status=code)
        raise AssertionError("unreachable")


# --- doors, access groups, schedules -----------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="List doors", tags=["doors"]),
    retrieve=extend_schema(summary="Get a door", tags=["doors"]),
    create=extend_schema(summary="Create a door", tags=["doors"]),
    update=extend_schema(summary="Replace a door", tags=["doors"]),
    partial_update=extend_schema(summary="Update a door", tags=["doors"]),
    destroy=extend_schema(summary="Delete a door (409 while events or devices refer to it)", tags=["doors"]),
)
class DoorViewSet(ApiModelViewSet):
    queryset = Door.objects.order_by("name", "id")
    serializer_class = serializers.DoorSerializer
    filterset_class = filters.DoorFilter
    read_scope = Scope.DOORS_READ
    write_scope = Scope.DOORS_WRITE


@extend_schema_view(
    list=extend_schema(summary="List access groups", tags=["access groups"]),
    retrieve=extend_schema(summary="Get an access group", tags=["access groups"]),
    create=extend_schema(summary="Create an access group", tags=["access groups"]),
    update=extend_schema(summary="Replace an access group", tags=["access groups"]),
    partial_update=extend_schema(summary="Update an access group", tags=["access groups"]),
    destroy=extend_schema(summary="Delete an access group", tags=["access groups"]),
)
class AccessGroupViewSet(ApiModelViewSet):
    queryset = AccessGroup.objects.order_by("name", "id").prefetch_related(
        Prefetch("people", queryset=Person.objects.only("id")),
        Prefetch("doors", queryset=Door.objects.only("id")),
    )
    serializer_class = serializers.AccessGroupSerializer
    filterset_class = filters.AccessGroupFilter
    read_scope = Scope.DOORS_READ
    write_scope = Scope.DOORS_WRITE


@extend_schema_view(
    list=extend_schema(summary="List anti-passback areas", tags=["areas"]),
    retrieve=extend_schema(summary="Get an area", tags=["areas"]),
    create=extend_schema(summary="Create an area", tags=["areas"]),
    update=extend_schema(summary="Replace an area", tags=["areas"]),
    partial_update=extend_schema(summary="Update an area", tags=["areas"]),
    destroy=extend_schema(summary="Delete an area", tags=["areas"]),
)
class AreaViewSet(ApiModelViewSet):
    queryset = Area.objects.order_by("name", "id").prefetch_related(
        Prefetch("entry_doors", queryset=Door.objects.only("id")),
        Prefetch("exit_doors", queryset=Door.objects.only("id")),
    )
    serializer_class = serializers.AreaSerializer
    filterset_class = filters.AreaFilter
    read_scope = Scope.DOORS_READ
    write_scope = Scope.DOORS_WRITE
    # Resetting is an operator's act (accessctl.operate_doors, audited with who): sessions only, no token scope.
    action_scopes = {"reset": None}  # type: ignore[dict-item]
    session_permissions = {"reset": ["accessctl.operate_doors"]}

    @extend_schema(
        summary="Reset one person's anti-passback in this area (signed-in operators only; audited)",
        tags=["areas"],
        request=serializers.AreaResetSerializer,
        responses={200: serializers.AccessEventSerializer},
    )
    @action(detail=True, methods=["post"], filterset_class=None)
    def reset(self, request: Request, pk: str | None = None) -> Response:
        body = serializers.AreaResetSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        event = area_presence_reset(area=self.get_object(), person=body.validated_data["person"], actor=request.user)
        return Response(serializers.AccessEventSerializer(event).data)


@extend_schema_view(
    list=extend_schema(summary="List schedules with their windows and holidays", tags=["schedules"]),
    retrieve=extend_schema(summary="Get a schedule", tags=["schedules"]),
    create=extend_schema(summary="Create a schedule", tags=["schedules"]),
    update=extend_schema(summary="Replace a schedule (windows and holidays replaced)", tags=["schedules"]),
    partial_update=extend_schema(summary="Update a schedule (lists given are replaced)", tags=["schedules"]),
    destroy=extend_schema(summary="Delete a schedule (409 while an access group uses it)", tags=["schedules"]),
)
class ScheduleViewSet(ApiModelViewSet):
    queryset = Schedule.objects.order_by("name", "id").prefetch_related("windows", "holidays")
    serializer_class = serializers.ScheduleSerializer
    filterset_class = filters.ScheduleFilter
    read_scope = Scope.DOORS_READ
    write_scope = Scope.DOORS_WRITE


# --- the access log and alarms ----------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(
        summary="List access events (newest first, cursor pagination)",
        description="Follow `next` to page back in time; the cursor stays stable while new events arrive.",
        tags=["access events"],
    ),
    retrieve=extend_schema(summary="Get an access event", tags=["access events"]),
)
class AccessEventViewSet(ApiReadOnlyViewSet):
    queryset = AccessEvent.objects.select_related("door", "person").order_by("-occurred_at", "-id")
    serializer_class = serializers.AccessEventSerializer
    filterset_class = filters.AccessEventFilter
    pagination_class = EventCursorPagination
    read_scope = Scope.EVENTS_READ


@extend_schema_view(
    list=extend_schema(summary="List alarms (newest first)", tags=["alarms"]),
    retrieve=extend_schema(summary="Get an alarm", tags=["alarms"]),
)
class AlarmViewSet(ApiReadOnlyViewSet):
    queryset = Alarm.objects.order_by("-raised_at", "-id")
    serializer_class = serializers.AlarmSerializer
    filterset_class = filters.AlarmFilter
    read_scope = Scope.EVENTS_READ
    # Acknowledging is an operator's act: sessions only (accessctl.view_dashboard), no token scope.
    session_permissions = {"acknowledge": ["accessctl.view_dashboard"]}

    @extend_schema(summary="Acknowledge an alarm (signed-in operators only)", tags=["alarms"], request=None)
    @action(detail=True, methods=["post"], filterset_class=None)
    def acknowledge(self, request: Request, pk: str | None = None) -> Response:
        alarm = alarm_acknowledge(alarm=self.get_object(), actor=request.user)
        return Response(serializers.AlarmSerializer(alarm).data)


# --- webhooks ---------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="List webhook subscriptions", tags=["webhooks"]),
    retrieve=extend_schema(summary="Get a webhook subscription", tags=["webhooks"]),
    create=extend_schema(
        summary="Create a webhook subscription",
        description="The answer includes the signing `secret`; it is not shown again (rotate it if lost).",
        tags=["webhooks"],
        responses={201: serializers.WebhookSubscriptionSecretSerializer},
    ),
    update=extend_schema(summary="Replace a webhook subscription", tags=["webhooks"]),
    partial_update=extend_schema(summary="Update a webhook subscription", tags=["webhooks"]),
    destroy=extend_schema(summary="Delete a webhook subscription and its delivery log", tags=["webhooks"]),
)
class WebhookSubscriptionViewSet(ApiModelViewSet):
    queryset = WebhookSubscription.objects.order_by("name", "id")
    serializer_class = serializers.WebhookSubscriptionSerializer
    read_scope = Scope.WEBHOOKS_WRITE
    write_scope = Scope.WEBHOOKS_WRITE
    session_permissions = {"rotate_secret": ["accessctl.change_webhooksubscription"]}

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        secret = serializer.validated_data.pop("secret", None) or webhook_secret_generate()
        subscription = serializer.save(secret=secret)
        logger.info("webhook subscription %s created by user %s", subscription.pk, request.user.pk)
        data = serializers.WebhookSubscriptionSecretSerializer(subscription).data
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Replace the signing secret",
        description="Returns the subscription with its new secret (shown once).",
        tags=["webhooks"],
        request=None,
        responses=serializers.WebhookSubscriptionSecretSerializer,
    )
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        subscription = self.get_object()
        subscription.secret = webhook_secret_generate()
        subscription.save(update_fields=["secret"])
        logger.info("webhook subscription %s secret rotated by user %s", subscription.pk, request.user.pk)
        return Response(serializers.WebhookSubscriptionSecretSerializer(subscription).data)


@extend_schema_view(
    list=extend_schema(summary="List webhook deliveries (newest first)", tags=["webhooks"]),
    retrieve=extend_schema(summary="Get a webhook delivery", tags=["webhooks"]),
)
class WebhookDeliveryViewSet(ApiReadOnlyViewSet):
    queryset = WebhookDelivery.objects.order_by("-created_at", "-id")
    serializer_class = serializers.WebhookDeliverySerializer
    filterset_class = filters.WebhookDeliveryFilter
    read_scope = Scope.WEBHOOKS_WRITE
    action_scopes = {"redeliver": Scope.WEBHOOKS_WRITE}
    session_permissions = {"redeliver": ["accessctl.change_webhookdelivery"]}

    @extend_schema(
        summary="Send a delivery again",
        tags=["webhooks"],
        request=None,
        responses={202: OpenApiResponse(serializers.WebhookDeliverySerializer)},
    )
    @action(detail=True, methods=["post"], filterset_class=None)
    def redeliver(self, request: Request, pk: str | None = None) -> Response:
        with transaction.atomic():
            delivery = webhook_redeliver(delivery=self.get_object())
        return Response(serializers.WebhookDeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
