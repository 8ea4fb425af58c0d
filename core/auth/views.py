"""Sign-in pages and the administrators' pages (accounts, audit log)."""

from __future__ import annotations

from urllib.parse import urlsplit

import marshmallow as ma
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.security import check_password_hash

from core import audit
from core.api import describe_errors
from core.auth import passwords
from core.auth.access import ROLES, SESSION_KEY, allow, current_token, current_user, public
from core.auth.accounts import (
    PENDING_MESSAGE,
    CoreSignupSchema,
    SignInRefused,
    request_account,
    sign_in,
)
from core.auth.models import SESSION_LIFETIME, STATUSES, ApiToken, User
from core.auth.users_api import (
    CoreAccountUpdateSchema,
    find_user,
    reset_password,
    update_account,
)
from core.db import utcnow

pages = Blueprint("auth_pages", __name__)
AUDIT_PAGE_SIZE = 50


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no open redirect)."""
    if not target:
        return url_for("core_patients.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("core_patients.index")
    return target


@pages.route("/login", methods=["GET", "POST"])
@public
def login():
    error, email = None, ""
    if request.method == "POST":
        email = request.form.get("email", "").strip()
        try:
            user = sign_in(email, request.form.get("password", ""))
        except SignInRefused as refused:
            error = refused.message
            return render_template("caredeck/login.html", error=error, email=email), (
                refused.status
            )
        secret, _ = ApiToken.issue(user, lifetime=SESSION_LIFETIME, kind="session")
        session.clear()  # a fresh session (and CSRF token) for the signed-in user
        session[SESSION_KEY] = secret
        session.permanent = True
        return redirect(_safe_next(request.args.get("next")))
    return render_template("caredeck/login.html", error=error, email=email)


@pages.route("/signup", methods=["GET", "POST"])
@public
def signup():
    values, errors = {}, {}
    if request.method == "POST":
        values = {key: request.form.get(key, "") for key in ("name", "email", "password")}
        if values["password"] != request.form.get("password_confirm", ""):
            errors["password_confirm"] = ["The two passwords differ."]
        try:
            data = CoreSignupSchema().load(values)
        except ma.ValidationError as invalid:
            errors.update(invalid.messages)
        if not errors:
            request_account(data["name"], data["email"], data["password"])
            return render_template("caredeck/signup.html", done=True, message=PENDING_MESSAGE)
        values.pop("password")
    status = 422 if errors else 200
    return render_template("caredeck/signup.html", values=values, errors=errors), status


@pages.route("/logout", methods=["GET", "POST"])
@public
def logout():
    """GET asks (a link or a mail scanner must not sign anyone out); POST signs out."""
    if request.method == "POST":
        token = current_token()
        if token is not None and token.kind == "session":
            token.revoke()  # the session ends on the server, not only in this browser
        session.clear()
        return render_template("caredeck/login.html", signed_out=True)
    return render_template("caredeck/logout.html")


# Administrators ---------------------------------------------------------------------------


def _users_page(message: str | None = None, status_code: int = 200):
    status = request.args.get("status", "")
    query = User.select().order_by(User.status.desc(), User.created_at.desc())
    if status in STATUSES:
        query = query.where(User.status == status)
    page = render_template(
        "caredeck/admin_users.html",
        users=list(query.limit(500)),
        roles=ROLES,
        statuses=STATUSES,
        status=status,
        message=message,
        now=utcnow(),
    )
    return page, status_code


@pages.route("/admin/users")
@allow("admin")
def users():
    return _users_page()


@pages.route("/admin/users/<int:user_id>", methods=["POST"])
@allow("admin")
def change_user(user_id: int):
    """One form per action; a refusal is shown on the page, as a sentence."""
    user = find_user(user_id)
    action = request.form.get("action")
    try:
        if action == "reset-password":
            # Shown in this response only: a flash message would travel in the cookie.
            temporary = reset_password(user)
            return _users_page(
                f"New temporary password for {user.email}: {temporary} "
                "(shown once; they should change it after signing in)."
            )
        if action == "disable":
            changes = {"status": "disabled"}
        elif action == "activate":
            changes = CoreAccountUpdateSchema().load(
                {
                    "status": "active",
                    "role": request.form.get("role") or None,
                    "patient_mrn": request.form.get("patient_mrn") or None,
                }
            )
        else:
            abort(400, "Choose one of the actions on the page.")
        update_account(user, changes)
    except ma.ValidationError as invalid:
        return _users_page(f"{user.email}: " + "; ".join(describe_errors(invalid.messages)), 422)
    except HTTPException as refused:
        return _users_page(f"{user.email}: {refused.description}", refused.code or 400)
    flash(f"{user.email} is now {user.status}" + (f" ({user.role})." if user.role else "."))
    return redirect(url_for("auth_pages.users"))


@pages.route("/account/password", methods=["GET", "POST"])
@allow(*ROLES)
def change_password():
    """Change one's own password (after a reset, or at any time); other sessions end."""
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        user = current_user()
        new = request.form.get("password", "")
        if not check_password_hash(user.password_hash, request.form.get("current", "")):
            errors["current"] = ["This is not your current password."]
        reasons = passwords.problems(new, email=user.email, name=user.name)
        if reasons:
            errors["password"] = reasons
        elif new != request.form.get("password_confirm", ""):
            errors["password_confirm"] = ["The two passwords differ."]
        if not errors:
            user.set_password(new)  # ends every session, this one too
            secret, _ = ApiToken.issue(user, lifetime=SESSION_LIFETIME, kind="session")
            session.clear()
            session[SESSION_KEY] = secret
            session.permanent = True
            flash("Your password is changed; your other sessions have ended.")
            return redirect(url_for("core_patients.index"))
    status = 422 if errors else 200
    return render_template("caredeck/account_password.html", errors=errors), status


def _audit_filters() -> dict[str, str | None]:
    return {
        "patient": request.args.get("patient") or None,
        "user": request.args.get("user") or None,
    }


@pages.route("/admin/audit")
@allow("admin")
@audit.audited("search audit")
def audit_log():
    filters = _audit_filters()
    audit.note(patient=filters["patient"])
    page = max(1, request.args.get("page", 1, type=int))
    events = list(audit.query(**filters).paginate(page, AUDIT_PAGE_SIZE))
    return render_template(
        "caredeck/admin_audit.html",
        events=events,
        page=page,
        filters=filters,
        page_size=AUDIT_PAGE_SIZE,
    )


@pages.route("/admin/audit.csv")
@allow("admin")
@audit.audited("export audit")
def audit_export():
    filters = _audit_filters()
    audit.note(patient=filters["patient"])
    lines = audit.to_csv(audit.query(**filters))
    return Response(
        stream_with_context(lines),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="caredeck-audit.csv"'},
    )


def init_app(app) -> None:
    app.register_blueprint(pages)
    app.context_processor(lambda: {"signed_in": current_user() is not None})
