"""Configuration loading, environment overrides and validation errors (no network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode.cli import main
from dicomnode.config import ConfigError, Settings, load_settings

# The SPEC "Configuration" example, plus the optional sections a site would add.
SPEC_EXAMPLE = """
[node]
ae_title = "DICOMNODE"
host = "0.0.0.0"
port = 11112
allowed_calling_aets = []        # empty list: any caller
max_associations = 16
[storage]
path = "var/storage"
[database]
url = "sqlite:///var/dicomnode.db"   # or postgresql+psycopg://...
[assembly]
quiet_seconds = 10                # a study is complete after this quiet time
[api]
host = "127.0.0.1"
port = 8080
[[destinations]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242
[[routes]]
pipeline = "lung_nodule"
match = { Modality = "CT" }       # more conditions allowed, see below
send_to = ["pacs"]                # or "sender": back to the calling AE
[pipelines.lung_nodule]
bundle = "models/lung_nodule_ct"
"""

FULL = (
    SPEC_EXAMPLE
    + """
[[routes]]
name = "brain"
pipeline = "brain_tumor"
priority = 5
continue_matching = true
send_to = ["pacs", "sender"]
match = { Modality = "MR", SeriesDescription = { regex = "(?i)t1.*post" } }
complete_when = [
  { SeriesDescription = { regex = "(?i)t1.*post" } },
  { SeriesDescription = { regex = "(?i)flair" } },
]
[[routes]]
pipeline = "geometry_qa"
match = { SliceThickness = { min = 0.5, max = 2.5 }, ImageType = { contains = ["AXIAL"] } }
[pipelines.brain_tumor]
device = "cpu"
threshold = 0.4
"""
)


@pytest.fixture(autouse=True)
def _no_dicomnode_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ: keep the caller's DICOMNODE_* out of these tests."""
    for name in list(os.environ):
        if name.startswith("DICOMNODE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "dicomnode.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), resolve=False, environ=environ or {})
    message = str(info.value)
    assert "\n" not in message, message
    return message


# -- loading ------------------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    settings = load_settings(None, resolve=False, environ={})
    assert isinstance(settings, Settings)
    assert settings.node.ae_title == "DICOMNODE"
    assert settings.node.port == 11112
    assert settings.node.host == "0.0.0.0"
    assert settings.node.allowed_calling_aets == []
    assert settings.node.max_associations == 16
    assert settings.storage.path == Path("var/storage")
    assert settings.database.url == "sqlite:///var/dicomnode.db"
    assert settings.assembly.quiet_seconds == 10
    assert (settings.api.host, settings.api.port) == ("127.0.0.1", 8080)
    assert settings.destinations == [] and settings.routes == [] and settings.pipelines == {}
    assert not settings.node.tls.enabled


def test_spec_example_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, SPEC_EXAMPLE), resolve=False, environ={})
    assert settings.destination("pacs").ae_title == "ORTHANC"
    assert settings.destination("pacs").port == 4242
    (route,) = settings.routes
    assert route.pipeline == "lung_nodule"
    assert route.match == {"Modality": "CT"}
    assert route.send_to == ["pacs"]
    assert not route.continue_matching and route.priority == 0
    assert settings.pipeline("lung_nodule").bundle == Path("models/lung_nodule_ct")
    with pytest.raises(KeyError):
        settings.destination("nowhere")


def test_full_file_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL), resolve=False, environ={})
    assert [r.pipeline for r in settings.routes] == ["lung_nodule", "brain_tumor", "geometry_qa"]
    brain = settings.routes[1]
    assert brain.name == "brain" and brain.priority == 5 and brain.continue_matching
    assert brain.send_to == ["pacs", "sender"]
    assert len(brain.complete_when) == 2
    assert settings.routes[2].match["SliceThickness"] == {"min": 0.5, "max": 2.5}
    pipeline = settings.pipeline("brain_tumor")
    assert pipeline.device == "cpu"
    assert pipeline.model_extra == {"threshold": 0.4}  # extra keys reach the pipeline
    assert settings.pipeline("unknown").device == "auto"  # defaults without a section


def test_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, SPEC_EXAMPLE)
    url = f"sqlite:///{tmp_path / 'other.db'}"
    settings = load_settings(
        path,
        resolve=False,
        environ={
            "DICOMNODE_NODE__PORT": "11113",
            "DICOMNODE_DATABASE__URL": url,
            "DICOMNODE_NODE__ALLOWED_CALLING_AETS": '["CT1", "MR1"]',
            "DICOMNODE_LOG_LEVEL": "DEBUG",
            "DICOMNODE_CONFIG": "/ignored.toml",  # names the file, is not a setting
            "UNRELATED": "1",
        },
    )
    assert settings.node.port == 11113 and isinstance(settings.node.port, int)
    assert settings.database.url == url
    assert settings.node.allowed_calling_aets == ["CT1", "MR1"]
    assert settings.log_level == "DEBUG"
    assert settings.node.ae_title == "DICOMNODE"  # the rest of the file still applies


def test_environment_overrides_without_a_file() -> None:
    environ = {"DICOMNODE_NODE__PORT": "11113", "DICOMNODE_WORKERS__MAX_ATTEMPTS": "7"}
    settings = load_settings(None, resolve=False, environ=environ)
    assert settings.node.port == 11113
    assert settings.workers.max_attempts == 7


def test_environment_value_that_is_bad_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^node\.port: "):
        load_settings(None, resolve=False, environ={"DICOMNODE_NODE__PORT": "not-a-port"})


def test_environment_override_of_a_numeric_looking_ae_title() -> None:
    settings = load_settings(None, resolve=False, environ={"DICOMNODE_NODE__AE_TITLE": "1234"})
    assert settings.node.ae_title == "1234"


def test_resolve_uses_dicomnode_config_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[node]\nae_title = "FROMENV"\n', name="site.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DICOMNODE_CONFIG", str(path))
    assert load_settings(None, environ={}).node.ae_title == "FROMENV"
    monkeypatch.delenv("DICOMNODE_CONFIG")
    write(tmp_path, '[node]\nae_title = "LOCAL"\n')  # ./dicomnode.toml
    assert load_settings(None, environ={}).node.ae_title == "LOCAL"
    assert load_settings(None, resolve=False, environ={}).node.ae_title == "DICOMNODE"


# -- errors name the key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ("[node]\nport = 70000\n", "node.port", "less than or equal to 65535"),
        ("[node]\nport = 0\n", "node.port", "greater than or equal to 1"),
        ("[node]\nport = 'x'\n", "node.port", "valid integer"),
        ("[node]\nprot = 11112\n", "node.prot", "unknown key"),
        ("[nodes]\nport = 1\n", "nodes", "unknown key"),
        ('[node]\nae_title = "BAD\\\\AE"\n', "node.ae_title", "without backslash"),
        ('[node]\nae_title = "ABCDEFGHIJKLMNOPQ"\n', "node.ae_title", "1-16"),
        ('[node]\nae_title = "   "\n', "node.ae_title", "1-16"),
        ('[node]\nallowed_calling_aets = ["OK", "B\\\\D"]\n', "node.allowed_calling_aets", ""),
        (
            '[[routes]]\npipeline = "x"\nsend_to = ["nowhere"]\n',
            "routes.0.send_to",
            "unknown destination 'nowhere'",
        ),
        (
            '[[routes]]\npipeline = "x"\nmatch = { Modallity = "CT" }\n',
            "routes.0.match",
            "'Modallity' is not a DICOM keyword",
        ),
        (
            '[[routes]]\npipeline = "x"\nmatch = { SeriesDescription = { regex = "(" } }\n',
            "routes.0.match",
            "SeriesDescription: bad regex",
        ),
        (
            '[[routes]]\npipeline = "x"\ncomplete_when = [{ SeriesDescription = { regex = "[" } }]\n',
            "routes.0.complete_when",
            "bad regex",
        ),
        (
            '[[routes]]\npipeline = "x"\nmatch = { SliceThickness = { maxx = 1 } }\n',
            "routes.0.match",
            "use one of regex, min, max, contains, any",
        ),
        (
            '[[routes]]\npipeline = "x"\nmatch = { SliceThickness = { max = "thin" } }\n',
            "routes.0.match",
            "max must be a number",
        ),
        ('[[routes]]\nmatch = { Modality = "CT" }\n', "routes.0.pipeline", "Field required"),
        ("[node.tls]\nenabled = true\n", "node.tls", "certificate and private_key are required"),
        (
            '[node.tls]\nenabled = true\ncertificate = "c.pem"\n',
            "node.tls",
            "certificate and private_key are required",
        ),
        ('[database]\nurl = "mysql://x"\n', "database.url", "sqlite:/// or postgresql"),
        ("[workers]\nheartbeat_seconds = 100\n", "workers", "shorter than lease_seconds"),
        ('log_level = "TRACE"\n', "log_level", "'DEBUG'"),
        (
            '[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 0\n',
            "destinations.0.port",
            "greater than or equal to 1",
        ),
    ],
)
def test_bad_value_gives_one_line_error_naming_the_key(
    tmp_path: Path, text: str, key: str, detail: str
) -> None:
    message = error_of(tmp_path, text)
    assert key in message, message
    assert detail in message, message


def test_send_to_sender_needs_no_destination(tmp_path: Path) -> None:
    text = '[[routes]]\npipeline = "x"\nsend_to = ["sender"]\n'
    settings = load_settings(write(tmp_path, text), resolve=False, environ={})
    assert settings.routes[0].send_to == ["sender"]


def test_second_route_with_unknown_destination_is_named(tmp_path: Path) -> None:
    text = SPEC_EXAMPLE + '[[routes]]\npipeline = "y"\nsend_to = ["pacs", "archive"]\n'
    assert "routes.1.send_to: unknown destination 'archive'" in error_of(tmp_path, text)


def test_several_problems_are_counted_on_one_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[node]\nport = 70000\nprot = 1\n")
    assert message.startswith("node.port: ") and message.endswith("(and 1 more problem)")


def test_tls_with_files_is_accepted(tmp_path: Path) -> None:
    text = '[node.tls]\nenabled = true\ncertificate = "c.pem"\nprivate_key = "k.pem"\n'
    tls = load_settings(write(tmp_path, text), resolve=False, environ={}).node.tls
    assert tls.enabled and tls.certificate == Path("c.pem")


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "missing.toml", resolve=False, environ={})
    assert "not valid TOML" in error_of(tmp_path, "node = [")


# -- the CLI ------------------------------------------------------------------------------


def test_cli_config_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, FULL)
    assert main(["config", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"{path}: OK (3 route(s), 1 destination(s)")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[node]\nport = 70000\n", "node.port"),
        ("[node]\nprot = 1\n", "node.prot"),
        ('[[routes]]\npipeline = "x"\nsend_to = ["nowhere"]\n', "routes.0.send_to"),
        ("node = [", "not valid TOML"),
    ],
)
def test_cli_config_check_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str
) -> None:
    assert main(["config", "check", str(write(tmp_path, text))]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("dicomnode: ") and key in err
    assert "Traceback" not in err


def test_cli_config_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_config_check_as_a_subprocess(tmp_path: Path) -> None:
    good = write(tmp_path, SPEC_EXAMPLE, name="good.toml")
    bad = write(tmp_path, '[node]\nae_title = "BAD\\\\AE"\n', name="bad.toml")
    env = {"PATH": "/usr/bin:/bin"}  # no DICOMNODE_* from the caller's environment
    run = [sys.executable, "-m", "dicomnode.cli", "config", "check"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=60, env=env)
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "node.ae_title" in failed.stderr


def test_destination_names_are_unique(tmp_path: Path) -> None:
    text = (
        '[[destinations]]\nname = "pacs"\nae_title = "A"\nhost = "h"\nport = 104\n'
        '[[destinations]]\nname = "pacs"\nae_title = "B"\nhost = "h"\nport = 105\n'
    )
    path = tmp_path / "dup.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"^destinations\.1\.name: 'pacs' is used twice$"):
        load_settings(path, resolve=False, environ={})


# -- sources, DICOMweb peers, STOW-RS ---------------------------------------------------------

WEB = '[[sources]]\nname = "web"\nkind = "dicomweb"\nurl = "https://pacs.example/dicom-web/"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[sources]]\nname = "pacs"\nhost = "h"\nport = 104\n',
            'sources.0.ae_title: required for kind = "dimse"',
        ),
        (
            '[[sources]]\nname = "web"\nkind = "dicomweb"\n',
            'sources.0.url: required for kind = "dicomweb"',
        ),
        (
            '[[sources]]\nname = "web"\nkind = "dicomweb"\nurl = "ftp://x"\n',
            "sources.0.url: must be an http:// or https:// URL",
        ),
        (
            WEB + 'auth = "basic"\nusername = "u"\n',
            "sources.0.password: required with auth = 'basic'",
        ),
        (WEB + 'auth = "bearer"\n', "sources.0.token: required with auth = 'bearer'"),
        (
            WEB + 'auth = "oauth2"\ntoken_url = "https://idp/token"\nclient_id = "c"\n',
            "sources.0.client_secret: required with auth = 'oauth2'",
        ),
        (
            WEB + 'auth = "kerberos"\n',
            "sources.0.auth: Input should be 'none', 'basic', 'bearer' or 'oauth2'",
        ),
        (
            '[[sources]]\nname = "pacs"\nae_title = "P"\nhost = "h"\nport = 104\nretrieve = "fetch"\n',
            "sources.0.retrieve: Input should be 'move' or 'get'",
        ),
        (
            WEB + WEB,
            "sources.1.name: 'web' is used twice",
        ),
        (
            '[node]\nallowed_calling_aets = ["CT1"]\n'
            '[[sources]]\nname = "pacs"\nae_title = "PACS"\nhost = "h"\nport = 104\n',
            "sources.0.ae_title: PACS is not in node.allowed_calling_aets, so the C-STOREs of its "
            "C-MOVEs would be refused; add it there",
        ),
        (
            '[[destinations]]\nname = "web"\nkind = "dicomweb"\nauth = "bearer"\n'
            'url = "http://h/dicom-web"\ntoken = "env:NOT_SET_ANYWHERE"\n',
            "destinations.0.token: environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            '[api]\nstow = true\n[[api.tokens]]\ntoken = "read-token-0123456789"\n',
            'api.stow: needs a token that may store: add [[api.tokens]] with role = "store"',
        ),
    ],
)
def test_sources_and_dicomweb_peers_are_checked(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text) == expected


def test_sources_dicomweb_destinations_and_secrets_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DN_SECRET", "client-secret-value")
    monkeypatch.setenv("DN_STORE_TOKEN", "store-token-0123456789")
    text = (
        WEB + 'auth = "oauth2"\ntoken_url = "https://idp.example/token"\nclient_id = "node"\n'
        'client_secret = "env:DN_SECRET"\nscope = "dicom"\n'
        '[[sources]]\nname = "pacs"\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 104\n'
        'retrieve = "get"\ntls = true\n'
        '[[destinations]]\nname = "cloud"\nkind = "dicomweb"\nurl = "https://cloud/dicomweb"\n'
        'auth = "basic"\nusername = "node"\npassword = "pw"\n'
        '[api]\nstow = true\n[[api.tokens]]\ntoken = "env:DN_STORE_TOKEN"\nrole = "store"\n'
    )
    settings = load_settings(write(tmp_path, text), resolve=False, environ={})
    web = settings.source("web")
    assert web.url == "https://pacs.example/dicom-web"  # the trailing slash goes
    assert web.client_secret == "client-secret-value" and web.address == web.url
    pacs = settings.source("pacs")
    assert pacs.retrieve == "get" and pacs.address == "PACS@10.0.0.5:104"
    assert settings.destination("cloud").kind == "dicomweb"
    assert settings.api.tokens[0].token == "store-token-0123456789"
    assert settings.api.tokens[0].role == "store" and settings.api.stow
    with pytest.raises(ValueError, match="cloud is a DICOMweb peer, not a DIMSE one"):
        settings.destination("cloud").dimse_peer()


def test_destination_outputs_choose_the_kinds_of_result_it_gets(tmp_path: Path) -> None:
    from dicomnode.outputs import output_kind

    path = tmp_path / "dicomnode.toml"
    path.write_text(
        SPEC_EXAMPLE
        + '[[destinations]]\nname = "legacy"\nae_title = "OLDPACS"\nhost = "10.0.0.9"\n'
        + 'port = 104\noutputs = ["gsps", "sc"]\n'
    )
    settings = load_settings(path, resolve=False, environ={})
    modern, legacy = settings.destination("pacs"), settings.destination("legacy")
    assert modern.outputs == ["seg", "sr", "gsps", "sc"]  # default: everything
    assert legacy.outputs == ["gsps", "sc"]
    seg, sr, gsps, sc, ct = (
        "1.2.840.10008.5.1.4.1.1.66.4",
        "1.2.840.10008.5.1.4.1.1.88.34",
        "1.2.840.10008.5.1.4.1.1.11.1",
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.2",
    )
    assert [legacy.takes(output_kind(uid)) for uid in (seg, sr, gsps, sc)] == [
        False,
        False,
        True,
        True,
    ]
    assert legacy.takes(output_kind(ct))  # a kind no filter covers goes everywhere
    for bad, message in (('["pdf"]', "outputs.0: Input should be"), ("[]", "outputs: must list")):
        path.write_text(SPEC_EXAMPLE.replace("port = 4242\n", f"port = 4242\noutputs = {bad}\n"))
        with pytest.raises(ConfigError, match=rf"^destinations\.0\.{message}"):
            load_settings(path, resolve=False, environ={})
