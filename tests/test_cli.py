"""The `gasworks` command on the embedded default: set-up, checks, and clear errors with exit 2."""

from typer.testing import CliRunner

from gasworks.entrypoints.cli.main import app

runner = CliRunner()


def run(url, *args):
    return runner.invoke(app, [*args, "--database-url", url])


def test_operator_sets_up_and_checks_the_ledger(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    assert run(url, "db", "upgrade").exit_code == 0
    created = run(url, "keys", "add", "--role", "operator", "--name", "wang")
    assert created.exit_code == 0 and "gw_key_" in created.output
    added = run(url, "channels", "add", "wo-wallet", "--kind", "wallet-hmac", "--name", "Wo Wallet", "--generate-secret")
    assert added.exit_code == 0 and "shared secret" in added.output
    opened = run(url, "accounts", "add", "4301000001", "--name", "张三", "--phone", "13812345678", "--meter-serial", "00000000000001", "--meter-kind", "iot")
    assert opened.exit_code == 0 and "138****5678" in opened.output and "13812345678" not in opened.output
    checked = run(url, "check")
    assert checked.exit_code == 0 and "ledger holds" in checked.output
    listed = run(url, "channels", "list")
    assert "wo-wallet" in listed.output and "secret" not in listed.output.lower()


def test_bad_input_is_one_clear_line_and_exit_2(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    run(url, "db", "upgrade")
    bad = run(url, "accounts", "add", "123", "--name", "x", "--phone", "1", "--meter-serial", "1", "--meter-kind", "iot")
    assert bad.exit_code == 2 and "INVALID_ACCOUNT_NO" in bad.output and "Traceback" not in bad.output
    no_keys = run(url, "channels", "add", "wechat", "--kind", "wechatpay-v3", "--name", "WeChat")
    assert no_keys.exit_code == 2 and "MISSING_KEY" in no_keys.output
    missing_file = run(url, "channels", "add", "ali", "--kind", "alipay", "--name", "A", "--public-key-file", str(tmp_path / "nope.pem"))
    assert missing_file.exit_code == 2


def test_operator_manages_tariffs_kiosks_and_sees_meters_from_the_command_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    run(url, "db", "upgrade")
    added = run(url, "tariffs", "add", "residential", "--effective-from", "2027-01-01", "--tier", "390:2.832", "--tier", "600:3.398", "--tier", "-:4.248")
    assert added.exit_code == 0, added.output
    listed = run(url, "tariffs", "list")
    assert "2.832" in listed.output and "2027-01-01" in listed.output and "2.990" in listed.output
    run(url, "channels", "add", "kiosk", "--kind", "kiosk", "--name", "Kiosks")
    kiosk = run(url, "kiosks", "add", "k-1", "--name", "华新苑 1 号", "--channel", "kiosk", "--latitude", "26.893", "--longitude", "112.572", "--community", "华新苑")
    assert kiosk.exit_code == 0, kiosk.output
    assert run(url, "kiosks", "status", "k-1", "out_of_order").exit_code == 0
    assert "out_of_order" in run(url, "kiosks", "list").output
    run(url, "accounts", "add", "4301000001", "--name", "张三", "--phone", "13812345678", "--meter-serial", "00000000000001", "--meter-kind", "iot")
    shown = run(url, "meters", "show", "00000000000001")
    assert shown.exit_code == 0 and "purchases issued #0" in shown.output
    assert run(url, "alerts").exit_code == 0
    assert run(url, "commands", "list", "--state", "failed").exit_code == 0


def test_delivery_commands_refuse_bad_input_with_exit_2(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    run(url, "db", "upgrade")
    for args, code in [
        (("tariffs", "add", "residential", "--effective-from", "2027-13-01", "--tier", "-:3"), "INVALID_TARIFF"),
        (("tariffs", "add", "residential", "--effective-from", "2027-01-01", "--tier", "400:3", "--tier", "300:3", "--tier", "-:3"), "INVALID_TARIFF"),
        (("tariffs", "add", "residential", "--effective-from", "2027-01-01", "--tier", "-:2.9999999"), "INVALID_TARIFF"),
        (("meters", "show", "00000000000009"), "METER_NOT_FOUND"),
        (("carriers", "show", "00000000000009"), "NOT_ON_A_PLATFORM"),
        (("commands", "reissue", "42", "--reason", "x"), "COMMAND_NOT_FOUND"),
        (("kiosks", "add", "k-2", "--name", "x", "--channel", "nope", "--latitude", "1", "--longitude", "1"), "CHANNEL_NOT_FOUND"),
        (("worker",), "NO_BROKER"),
    ]:
        result = run(url, *args)
        assert result.exit_code == 2 and code in result.output and "Traceback" not in result.output, (args, result.output)
