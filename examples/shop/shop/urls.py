from django.contrib import admin
from django.urls import path

from shop import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("orders", views.orders),
    path("orders/<str:number>/ship", views.order_ship),
    path("orders/<str:number>", views.order_delete),
]
