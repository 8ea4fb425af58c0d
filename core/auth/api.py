"""``/api/auth``: exchange an email and password for a bearer token; who am I."""

from __future__ import annotations

import logging

import marshmallow as ma
from flask import abort
from flask.views import MethodView
from flask_smorest import Blueprint

from core.auth.access import ROLES, allow, current_user, public
from core.auth.models import USER_TOKEN_LIFETIME, ApiToken, User, utcnow

log = logging.getLogger("caredeck.auth")

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Sign-in for API clients")


class CoreTokenRequestSchema(ma.Schema):
    email = ma.fields.Email(required=True)
    password = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=1024))


class CoreTokenSchema(ma.Schema):
    access_token = ma.fields.String(required=True)
    token_type = ma.fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = ma.fields.Integer(
        required=True, metadata={"description": "Seconds until the token expires."}
    )


class CoreUserSchema(ma.Schema):
    email = ma.fields.Email()
    name = ma.fields.String()
    role = ma.fields.String(metadata={"enum": list(ROLES)})
    status = ma.fields.String()


@blp.route("/token")
class Token(MethodView):
    @public
    @blp.arguments(CoreTokenRequestSchema)
    @blp.response(200, CoreTokenSchema)
    @blp.alt_response(401, description="Wrong email or password")
    @blp.alt_response(403, description="The account is not active")
    def post(self, credentials):
        """Get a bearer token for the API.

        Send it as `Authorization: Bearer <token>`; it expires after `expires_in` seconds.
        """
        user = User.authenticate(credentials["email"], credentials["password"])
        if user is None:
            log.warning("failed token request for %s", credentials["email"].lower())
            abort(401, "The email or password is wrong.")
        if not user.is_active:
            abort(403, "This account is not active; an administrator must approve it first.")
        secret, _ = ApiToken.issue(user)
        user.last_login_at = utcnow()
        user.save()
        return {
            "access_token": secret,
            "token_type": "Bearer",
            "expires_in": int(USER_TOKEN_LIFETIME.total_seconds()),
        }


@blp.route("/me")
class Me(MethodView):
    @allow(*ROLES)
    @blp.response(200, CoreUserSchema)
    def get(self):
        """The signed-in user."""
        return current_user()
