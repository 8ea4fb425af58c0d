import peewee

from core.db import Model, UTCDateTimeField, utcnow


class HelloGreeting(Model):
    message = peewee.CharField(max_length=500)
    author = peewee.CharField(max_length=254)
    created_at = UTCDateTimeField(default=utcnow)
    delivered_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "hello_greetings"
