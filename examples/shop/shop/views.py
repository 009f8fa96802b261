"""A small JSON API over the shop's orders. Each view is one transaction
(ATOMIC_REQUESTS): the order and its outbox row commit, or neither does."""

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from shop.models import Customer, Order


def _order(order: Order) -> dict[str, Any]:
    return {
        "id": order.pk,
        "number": order.number,
        "customer": order.customer.email,
        "total": str(order.total),
        "status": order.status,
    }


def _problem(status: int, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status)


@csrf_exempt
@require_http_methods(["GET", "POST"])
def orders(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        found = Order.objects.select_related("customer").order_by("pk")
        return JsonResponse({"orders": [_order(order) for order in found]})
    try:
        body = json.loads(request.body)
        email, name, number = body["email"], body["name"], body["number"]
        total = Decimal(str(body["total"]))
    except (ValueError, KeyError, TypeError, InvalidOperation) as error:
        return _problem(400, f"send JSON with email, name, number and total ({error!r})")
    if total < 0:
        return _problem(400, "total must not be negative")
    if Order.objects.filter(number=number).exists():
        return _problem(409, f"order {number} exists")
    customer, _ = Customer.objects.get_or_create(email=email, defaults={"name": name})
    order = Order.objects.create(number=number, customer=customer, total=total)
    return JsonResponse(_order(order), status=201)


@csrf_exempt
@require_POST
def order_ship(request: HttpRequest, number: str) -> JsonResponse:
    order = get_object_or_404(Order.objects.select_related("customer"), number=number)
    if order.status != Order.Status.SHIPPED:
        order.status = Order.Status.SHIPPED
        order.save()
    return JsonResponse(_order(order))


@csrf_exempt
@require_http_methods(["DELETE"])
def order_delete(request: HttpRequest, number: str) -> JsonResponse:
    order = get_object_or_404(Order.objects.select_related("customer"), number=number)
    order.delete()
    return JsonResponse({}, status=200)
