import marshmallow as ma
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from core.auth import STAFF, allow, current_user
from hello_plugin.jobs import deliver
from hello_plugin.models import HelloGreeting

blp = Blueprint("hello", __name__, url_prefix="/api/hello", description="Greetings (example)")


class HelloGreetingSchema(ma.Schema):
    id = ma.fields.Integer(dump_only=True)
    message = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=400),
        metadata={"description": "What to say."},
    )
    author = ma.fields.String(dump_only=True)
    created_at = ma.fields.AwareDateTime(dump_only=True)
    delivered_at = ma.fields.AwareDateTime(dump_only=True, allow_none=True)


@blp.route("/greetings")
class Greetings(MethodView):
    @allow(*STAFF)
    @blp.response(200, HelloGreetingSchema(many=True))
    @blp.paginate()
    def get(self, pagination_parameters):
        """List greetings, newest first."""
        query = HelloGreeting.select().order_by(HelloGreeting.id.desc())
        pagination_parameters.item_count = query.count()
        return list(query.paginate(pagination_parameters.page, pagination_parameters.page_size))

    @allow("doctor", "nurse")
    @blp.arguments(HelloGreetingSchema)
    @blp.response(201, HelloGreetingSchema)
    def post(self, data):
        """Leave a greeting; it is delivered by a background job."""
        signature = current_app.config["HELLO_SIGNATURE"]
        greeting = HelloGreeting.create(
            message=f"{data['message']} {signature}".strip(), author=current_user().email
        )
        deliver.send(greeting.id)
        return greeting
