from typing import TYPE_CHECKING

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from shop.models import Customer, Order

if TYPE_CHECKING:  # generic in django-stubs only
    CustomerAdminBase = admin.ModelAdmin[Customer]
    OrderAdminBase = admin.ModelAdmin[Order]
else:
    CustomerAdminBase = OrderAdminBase = admin.ModelAdmin


@admin.register(Customer)
class CustomerAdmin(CustomerAdminBase):
    list_display = ["name", "email"]


@admin.register(Order)
class OrderAdmin(OrderAdminBase):
    list_display = ["number", "customer", "total", "status", "created_at"]
    actions = ["ship"]

    @admin.action(description="Mark as shipped (sends order.shipped)")
    def ship(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        # save() per order, not update(): signals, and so Herald, see each one.
        for order in queryset.exclude(status=Order.Status.SHIPPED):
            order.status = Order.Status.SHIPPED
            order.save()
