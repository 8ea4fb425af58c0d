"""``/api/users``: administrators approve, change, disable accounts and reset passwords."""

from __future__ import annotations

import secrets

import marshmallow as ma
from flask import abort
from flask.views import MethodView
from flask_smorest import Blueprint

from core.auth.access import ROLES, allow, current_user
from core.auth.models import STATUSES, User

blp = Blueprint("users", __name__, url_prefix="/api/users", description="User accounts (admin)")


class CoreAccountUpdateSchema(ma.Schema):
    name = ma.fields.String(validate=ma.validate.Length(min=1, max=200))
    role = ma.fields.String(allow_none=True, validate=ma.validate.OneOf(ROLES))
    status = ma.fields.String(validate=ma.validate.OneOf(STATUSES))
    patient_mrn = ma.fields.String(
        allow_none=True,
        validate=ma.validate.Length(min=1, max=64),
        metadata={"description": "For a patient user: the MRN of their own record."},
    )


class CoreAccountSchema(CoreAccountUpdateSchema):
    id = ma.fields.Integer(dump_only=True)
    email = ma.fields.Email(dump_only=True)
    created_at = ma.fields.AwareDateTime(dump_only=True)
    last_login_at = ma.fields.AwareDateTime(dump_only=True, allow_none=True)
    locked_until = ma.fields.AwareDateTime(dump_only=True, allow_none=True)


class CoreAccountQuerySchema(ma.Schema):
    status = ma.fields.String(validate=ma.validate.OneOf(STATUSES))
    role = ma.fields.String(validate=ma.validate.OneOf(ROLES))


class CoreTemporaryPasswordSchema(ma.Schema):
    temporary_password = ma.fields.String(
        metadata={"description": "Shown once; give it to the person, who should change it."}
    )


def find_user(user_id: int) -> User:
    user = User.get_or_none(User.id == user_id)
    if user is None:
        abort(404, f"There is no user {user_id}.")
    return user


def update_account(user: User, changes: dict) -> User:
    """Apply an administrator's changes, refusing combinations that make no sense."""
    if user.id == current_user().id and (
        changes.get("status", user.status) != "active" or changes.get("role", user.role) != "admin"
    ):
        abort(422, "You cannot disable your own account or take away your own admin role.")
    merged = {
        field: changes.get(field, getattr(user, field))
        for field in ("name", "role", "status", "patient_mrn")
    }
    if merged["status"] == "active" and merged["role"] is None:
        abort(
            422,
            "Give the account a role before activating it.",
        )
    if merged["patient_mrn"] is not None:
        if merged["role"] != "patient":
            abort(422, "Only a patient user is linked to a patient record.")
        from core.patients.models import Patient

        if Patient.get_or_none(Patient.mrn == merged["patient_mrn"]) is None:
            abort(422, f"There is no patient with MRN {merged['patient_mrn']}.")
    for field, value in merged.items():
        setattr(user, field, value)
    if merged["status"] == "active":
        user.locked_until, user.failed_logins = None, 0  # approving also unlocks
    user.save()
    if user.status != "active":
        user.revoke_all()  # a disabled account's sessions and tokens stop at once
    return user


def reset_password(user: User) -> str:
    """Give ``user`` a temporary password (returned, shown once) and end their sessions."""
    if user.id == current_user().id:
        abort(422, "Change your own password on your account page, not by a reset.")
    temporary = secrets.token_urlsafe(12)
    user.set_password(temporary)
    return temporary


@blp.route("")
class Users(MethodView):
    @allow("admin")
    @blp.arguments(CoreAccountQuerySchema, location="query")
    @blp.response(200, CoreAccountSchema(many=True))
    @blp.paginate()
    def get(self, filters, pagination_parameters):
        """Accounts, newest first; filter by status (e.g. pending) or role."""
        query = User.select().order_by(User.created_at.desc(), User.id.desc())
        if "status" in filters:
            query = query.where(User.status == filters["status"])
        if "role" in filters:
            query = query.where(User.role == filters["role"])
        pagination_parameters.item_count = query.count()
        return list(query.paginate(pagination_parameters.page, pagination_parameters.page_size))


@blp.route("/<int:user_id>")
class Account(MethodView):
    @allow("admin")
    @blp.response(200, CoreAccountSchema)
    def get(self, user_id):
        """One account."""
        return find_user(user_id)

    @allow("admin")
    @blp.arguments(CoreAccountUpdateSchema)
    @blp.response(200, CoreAccountSchema)
    def patch(self, changes, user_id):
        """Activate (with a role), change the role or name, disable, or link a patient user to
        their record. Disabling ends the account's sessions and tokens."""
        return update_account(find_user(user_id), changes)


@blp.route("/<int:user_id>/password-reset")
class PasswordReset(MethodView):
    @allow("admin")
    @blp.response(200, CoreTemporaryPasswordSchema)
    def post(self, user_id):
        """Replace the password with a temporary one (shown once); ends every session."""
        return {"temporary_password": reset_password(find_user(user_id))}
