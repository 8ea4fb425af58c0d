"""``/api/auth``: tokens for API clients, sign-up, who am I, and service tokens."""

from __future__ import annotations

import marshmallow as ma
from flask import abort
from flask.views import MethodView
from flask_smorest import Blueprint

from core.auth.access import ROLES, allow, current_token, current_user, public
from core.auth.accounts import (
    PENDING_MESSAGE,
    CoreSignupSchema,
    SignInRefused,
    request_account,
    sign_in,
)
from core.auth.models import USER_TOKEN_LIFETIME, ApiToken, User

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
    patient_mrn = ma.fields.String(allow_none=True)


class CoreSignupResultSchema(ma.Schema):
    status = ma.fields.String(metadata={"example": "pending"})
    message = ma.fields.String()


class CoreServiceTokenRequestSchema(ma.Schema):
    email = ma.fields.Email(
        required=True, metadata={"description": "The active account the integration acts as."}
    )
    label = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=200),
        metadata={"description": "What the token is for, e.g. 'LIS bridge'."},
    )


class CoreServiceTokenSchema(ma.Schema):
    id = ma.fields.Integer()
    user = ma.fields.Function(lambda token: token.user.email)
    label = ma.fields.String()
    created_at = ma.fields.AwareDateTime()
    last_used_at = ma.fields.AwareDateTime(allow_none=True)
    revoked_at = ma.fields.AwareDateTime(allow_none=True)


class CoreNewServiceTokenSchema(CoreServiceTokenSchema):
    access_token = ma.fields.String(metadata={"description": "Shown once; store it safely."})
    token_type = ma.fields.String(metadata={"example": "Bearer"})


@blp.route("/token")
class Token(MethodView):
    @public
    @blp.arguments(CoreTokenRequestSchema)
    @blp.response(200, CoreTokenSchema)
    @blp.alt_response(401, description="Wrong email or password")
    @blp.alt_response(403, description="The account is pending, disabled or locked")
    @blp.alt_response(429, description="Too many attempts")
    def post(self, credentials):
        """Get a bearer token for the API.

        Send it as `Authorization: Bearer <token>`; it expires after `expires_in` seconds.
        """
        try:
            user = sign_in(credentials["email"], credentials["password"])
        except SignInRefused as refused:
            abort(refused.status, refused.message)
        secret, _ = ApiToken.issue(user)
        return {
            "access_token": secret,
            "token_type": "Bearer",
            "expires_in": int(USER_TOKEN_LIFETIME.total_seconds()),
        }

    @allow(*ROLES)
    @blp.response(204)
    def delete(self):
        """Revoke the token this request was made with (sign out an API client)."""
        current_token().revoke()


@blp.route("/signup")
class Signup(MethodView):
    @public
    @blp.arguments(CoreSignupSchema)
    @blp.response(202, CoreSignupResultSchema)
    @blp.alt_response(429, description="Too many sign-ups from this address")
    def post(self, data):
        """Ask for an account; it has no access until an administrator approves it."""
        request_account(data["name"], data["email"], data["password"])
        return {"status": "pending", "message": PENDING_MESSAGE}


@blp.route("/me")
class Me(MethodView):
    @allow(*ROLES)
    @blp.response(200, CoreUserSchema)
    def get(self):
        """The signed-in user."""
        return current_user()


@blp.route("/service-tokens")
class ServiceTokens(MethodView):
    @allow("admin")
    @blp.response(200, CoreServiceTokenSchema(many=True))
    def get(self):
        """Every service token (never the secrets)."""
        return list(
            ApiToken.select(ApiToken, User)
            .join(User)
            .where(ApiToken.kind == "service")
            .order_by(ApiToken.id.desc())
        )

    @allow("admin")
    @blp.arguments(CoreServiceTokenRequestSchema)
    @blp.response(201, CoreNewServiceTokenSchema)
    def post(self, data):
        """Create a long-lived token for an integration; the secret is shown only here."""
        user = User.find(data["email"])
        if user is None or not user.is_active:
            abort(422, f"There is no active account {data['email']}; create it first.")
        secret, token = ApiToken.issue(user, lifetime=None, kind="service", label=data["label"])
        token.access_token, token.token_type = secret, "Bearer"
        return token


@blp.route("/service-tokens/<int:token_id>")
class ServiceToken(MethodView):
    @allow("admin")
    @blp.response(204)
    def delete(self, token_id):
        """Revoke a service token at once."""
        token = ApiToken.get_or_none(ApiToken.id == token_id, ApiToken.kind == "service")
        if token is None:
            abort(404, f"There is no service token {token_id}.")
        token.revoke()
