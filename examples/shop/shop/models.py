from django.db import models


class Customer(models.Model):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=200)

    def __str__(self) -> str:
        return self.name

    @property
    def subscriber(self) -> dict[str, str]:
        """The customer as a Herald subscriber, profile included: Herald saves it
        with the first event, so nobody has to sync customers beforehand."""
        return {"id": f"customer-{self.pk}", "email": self.email, "name": self.name}


class Order(models.Model):
    class Status(models.TextChoices):
        PLACED = "placed"
        SHIPPED = "shipped"

    number = models.CharField(max_length=20, unique=True)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="orders")
    total = models.DecimalField(max_digits=10, decimal_places=2)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PLACED)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.number
