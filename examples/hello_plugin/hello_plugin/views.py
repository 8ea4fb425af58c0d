from flask import Blueprint, render_template

from core.auth import STAFF, allow
from hello_plugin.models import HelloGreeting

pages = Blueprint("hello_pages", __name__, url_prefix="/hello", template_folder="templates")


@pages.route("/")
@allow(*STAFF)
def index():
    greetings = HelloGreeting.select().order_by(HelloGreeting.id.desc()).limit(50)
    return render_template("hello/index.html", greetings=greetings)


def chart_section(mrn: str) -> str:
    count = HelloGreeting.select().count()
    return render_template("hello/chart_section.html", mrn=mrn, count=count)
