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
