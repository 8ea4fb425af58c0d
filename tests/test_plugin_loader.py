"""The loader's failure cases: each stops start-up with the exact line a user sees."""

import pytest
from flask.views import MethodView
from flask_smorest import Blueprint
from helpers import make_plugin, sqlite_url

import jobs
from core import plugins
from core.app import create_app
from core.auth import allow
from core.db import Model
from core.plugins import Candidate, PluginError


@pytest.fixture
def caredeck_database_url(tmp_path):
    return sqlite_url(tmp_path)  # about start-up, not the database: once is enough


def build(caredeck_config, **named_plugins):
    return create_app(caredeck_config, plugin_objects=named_plugins)


def candidate(name, obj=None, error=None, distribution="pkg"):
    def load():
        if error:
            raise error
        return obj

    return Candidate(name, load, version="1.0", distribution=distribution)


def test_a_plugin_that_fails_to_import_names_itself_and_the_error():
    broken = candidate("billing", error=ModuleNotFoundError("No module named 'invoices'"))
    with pytest.raises(PluginError) as raised:
        plugins.load([broken], None)
    assert str(raised.value) == (
        "Plugin 'billing' failed to import: ModuleNotFoundError: No module named 'invoices'"
    )


def test_a_duplicate_plugin_name_names_both_packages():
    first = candidate("labs", make_plugin(), distribution="caredeck-labs")
    second = candidate("labs", make_plugin(), distribution="acme-labs")
    with pytest.raises(PluginError) as raised:
        plugins.load([first, second], None)
    assert str(raised.value) == (
        "Plugin 'labs' is installed twice (by caredeck-labs and acme-labs); uninstall one of them."
    )


def test_a_plugin_for_another_core_api_version_is_refused():
    with pytest.raises(PluginError) as raised:
        plugins.load([candidate("future", make_plugin(core_api=2))], None)
    assert str(raised.value) == (
        "Plugin 'future' targets core API 2, but this Caredeck provides core API 1; "
        "install a version of the plugin built for it."
    )


def test_a_plugin_without_core_api_is_refused():
    with pytest.raises(PluginError) as raised:
        plugins.load([candidate("vague", make_plugin(core_api=None))], None)
    assert str(raised.value) == (
        "Plugin 'vague' does not declare CORE_API; add CORE_API = 1 to the plugin module."
    )


def test_a_misspelt_hook_is_refused_with_a_suggestion():
    typo = make_plugin(caredeck_modles=lambda: [])
    with pytest.raises(PluginError) as raised:
        plugins.load([candidate("typo", typo)], None)
    assert str(raised.value) == (
        "Plugin 'typo' implements unknown hook 'caredeck_modles'. Did you mean 'caredeck_models'?"
    )


def test_a_hook_with_an_unknown_argument_is_refused():
    odd = make_plugin(caredeck_models=lambda database: [])
    with pytest.raises(PluginError) as raised:
        plugins.load([candidate("odd", odd)], None)
    assert str(raised.value) == (
        "Plugin 'odd': hook caredeck_models offers the arguments (app), but its "
        "implementation asks for (database)."
    )


def test_enabling_a_plugin_that_is_not_installed_is_refused():
    with pytest.raises(PluginError) as raised:
        plugins.load([candidate("labs", make_plugin())], ["labs", "billing"])
    assert str(raised.value) == (
        "CAREDECK_PLUGINS names plugin 'billing', which is not installed (installed: labs)."
    )


def test_only_enabled_plugins_are_registered():
    manager = plugins.load(
        [candidate("labs", make_plugin()), candidate("billing", make_plugin())], ["labs"]
    )
    assert [name for name, _ in manager.list_name_plugin()] == ["labs"]


def test_an_invalid_plugin_name_is_refused():
    with pytest.raises(PluginError) as raised:
        plugins.load([candidate("Lab-Results", make_plugin())], None)
    assert "Plugin 'Lab-Results' has an invalid name" in str(raised.value)


def test_the_installed_entry_points_are_read(monkeypatch):
    class EntryPoint:
        name = "labs"
        dist = type("Dist", (), {"name": "caredeck-labs", "version": "2.1"})()

        def load(self):
            return make_plugin()

    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: [EntryPoint()])
    [found] = plugins.installed()
    assert (found.name, found.version, found.distribution) == ("labs", "2.1", "caredeck-labs")


def test_a_table_outside_the_plugin_namespace_is_refused(caredeck_config):
    class Stray(Model):
        class Meta:
            table_name = "patients"

    with pytest.raises(PluginError) as raised:
        build(caredeck_config, labs=make_plugin(caredeck_models=lambda: [Stray]))
    assert str(raised.value) == (
        "Plugin 'labs' registers table 'patients'; table names must be 'labs' or start "
        "with 'labs_'."
    )


def test_an_actor_outside_the_plugin_namespace_is_refused(caredeck_config):
    job = jobs.actor("send", time_limit=__import__("datetime").timedelta(seconds=1), max_retries=0)(
        lambda: None
    )
    with pytest.raises(PluginError) as raised:
        build(caredeck_config, labs=make_plugin(caredeck_actors=lambda: [job]))
    assert str(raised.value) == (
        "Plugin 'labs' registers actor 'send'; actor names must be 'labs' or start with 'labs.'."
    )


def test_the_same_name_registered_twice_is_refused(caredeck_config):
    timedelta = __import__("datetime").timedelta
    job = jobs.actor("labs.sync", time_limit=timedelta(seconds=1), max_retries=0)(lambda: None)
    with pytest.raises(PluginError) as raised:
        build(caredeck_config, labs=make_plugin(caredeck_actors=lambda: [job, job]))
    assert str(raised.value) == (
        "Plugin 'labs' registers actor 'labs.sync', which plugin 'labs' already registers."
    )


def test_a_route_without_an_access_rule_stops_start_up(caredeck_config):
    blp = Blueprint("labs", __name__, url_prefix="/api/labs")

    @blp.route("/results")
    class Results(MethodView):
        def get(self):
            return {}

    with pytest.raises(PluginError) as raised:
        build(caredeck_config, labs=make_plugin(caredeck_api_blueprints=lambda: [blp]))
    assert str(raised.value) == (
        "Plugin 'labs': route GET /api/labs/results (labs.Results) declares no access rule; "
        "decorate the view with core.auth.allow(...) or core.auth.public (deny by default)."
    )


def test_a_hook_that_raises_names_the_plugin_and_hook(caredeck_config):
    def broken():
        raise RuntimeError("config file missing")

    with pytest.raises(PluginError) as raised:
        build(caredeck_config, labs=make_plugin(caredeck_navigation=broken))
    assert str(raised.value) == (
        "Plugin 'labs' failed in caredeck_navigation: RuntimeError: config file missing"
    )


def test_a_plugin_command_may_not_shadow_a_core_command(caredeck_config):
    import click

    serve = click.Command("serve", callback=lambda: None)
    with pytest.raises(PluginError) as raised:
        build(caredeck_config, labs=make_plugin(caredeck_cli_commands=lambda: [serve]))
    assert str(raised.value) == "Plugin 'labs' registers command 'serve', which is a core command."


def test_a_well_formed_plugin_registers_everything(caredeck_config):
    blp = Blueprint("labs", __name__, url_prefix="/api/labs")

    @blp.route("/results")
    class Results(MethodView):
        @allow("doctor")
        def get(self):
            return {}

    app = build(caredeck_config, labs=make_plugin(caredeck_api_blueprints=lambda app: [blp]))
    assert app.extensions["caredeck"].plugins["labs"].registered == {"API blueprint": ["labs"]}
    assert "/api/labs/results" in app.test_client().get("/api/openapi.json").json["paths"]


def test_a_plugin_may_not_take_a_core_name():
    with pytest.raises(PluginError) as raised:
        plugins.load([candidate("core_api", make_plugin())], None)
    assert "names starting with core, auth, health, api, static or jobs belong to the core" in (
        str(raised.value)
    )


def test_a_plugin_setting_may_not_replace_a_core_setting(caredeck_config):
    from core.config import Setting

    sneaky = make_plugin(
        caredeck_settings=lambda: [Setting("LABS_URL", "x"), Setting("LABS_URL", "y")]
    )
    with pytest.raises(PluginError) as raised:
        build(caredeck_config, labs=sneaky)
    assert str(raised.value) == (
        "Plugin 'labs' declares setting 'LABS_URL'; its settings must start with 'LABS_' "
        "and not repeat another setting."
    )


def test_a_navigation_entry_must_point_at_a_real_view(caredeck_config):
    from core.dashboard import NavItem

    lost = make_plugin(caredeck_navigation=lambda: [NavItem("labs", "Labs", "labs_pages.index")])
    with pytest.raises(PluginError) as raised:
        build(caredeck_config, labs=lost)
    assert str(raised.value) == (
        "Plugin 'labs': navigation entry 'labs' points at endpoint 'labs_pages.index', "
        "which no registered view has."
    )


def test_a_hook_returning_the_wrong_type_is_named(caredeck_config):
    with pytest.raises(PluginError) as raised:
        build(caredeck_config, labs=make_plugin(caredeck_chart_sections=lambda: ["labs"]))
    assert str(raised.value) == (
        "Plugin 'labs': caredeck_chart_sections must return core.dashboard.ChartSection "
        "objects, got 'labs'."
    )


def test_an_actor_with_a_misspelt_option_is_refused(caredeck_config):
    timedelta = __import__("datetime").timedelta
    job = jobs.actor("labs.sync", time_limit=timedelta(seconds=1), max_retries=0, max_retry=3)(
        lambda: None
    )
    with pytest.raises(PluginError) as raised:
        build(caredeck_config, labs=make_plugin(caredeck_actors=lambda: [job]))
    assert str(raised.value).startswith(
        "Plugin 'labs': actor 'labs.sync' has unknown options ['max_retry']"
    )
