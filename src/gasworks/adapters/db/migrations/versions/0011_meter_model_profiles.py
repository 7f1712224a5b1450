"""one meter model profile: meter_models gains the frame security profile, meters.model names it

Before: a meter's *frame-security* model (meter_frame_security.model: cjt188-sm4, cjt188-aes,
carrier-plain, fixed in code) and its *delivery* model (meters.model -> meter_models: serial width,
button) were two notions. After: one profile per model in meter_models (MAC scheme, DI byte order,
credit unit, report interval, serial width, button), and meters.model is the meter's only model.

Data: the built-in profiles are seeded; a stored delivery model takes the MAC scheme its keyed meters
were using (all of its meters must agree, else the migration stops and says which, rather than guess);
a meter without a delivery model takes its frame-security model. meter_frame_security.model goes.
Also: meters.credit_fen (a money meter's balance) and kiosks.opening_hours.

Revision ID: 0011
Revises: 0010
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# (name, purchase_seq_bytes, reopen_needs_button, mac_scheme, di_byte_order, credit_unit, report_interval_s, description)
# as domain/meter_models.py BUILT_IN_MODELS said when this migration was written: a migration does not import the domain.
BUILT_IN = (
    ("cjt188-sm4", 4, False, "sm4-cmac", "low-first", "litres", 86400, "CJ/T 188-2018 style NB-IoT volume meter, SM4-CMAC (the default)"),
    ("cjt188-aes", 4, False, "aes128-cmac", "low-first", "litres", 86400, "CJ/T 188 style volume meter whose module computes AES-128-CMAC"),
    ("carrier-plain", 4, False, "none", "low-first", "litres", 86400, "no MAC: accepted only through an authenticated carrier platform"),
    ("cjt188-money", 1, True, "sm4-cmac", "high-first", "fen", 86400, "money meter: 0xA013 with a one-byte serial and BCD yuan, DI sent 90 1F, button to reopen"),
)
SCHEME_OF_SECURITY_MODEL = {"cjt188-sm4": "sm4-cmac", "cjt188-aes": "aes128-cmac", "carrier-plain": "none"}


def upgrade() -> None:
    with op.batch_alter_table("meter_models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mac_scheme", sa.String(length=16), server_default="sm4-cmac", nullable=False))
        batch_op.add_column(sa.Column("di_byte_order", sa.String(length=12), server_default="low-first", nullable=False))
        batch_op.add_column(sa.Column("credit_unit", sa.String(length=8), server_default="litres", nullable=False))
        batch_op.add_column(sa.Column("report_interval_s", sa.Integer(), server_default="86400", nullable=False))
        batch_op.add_column(sa.Column("description", sa.String(length=200), server_default="", nullable=False))
    with op.batch_alter_table("meters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credit_fen", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("kiosks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("opening_hours", sa.String(length=40), server_default="", nullable=False))

    c = op.get_bind()
    # A stored delivery model's MAC scheme: the one its keyed meters use.
    rows = c.execute(sa.text("SELECT m.model AS model, s.model AS security_model FROM meters m JOIN meter_frame_security s ON s.serial = m.serial WHERE m.model IS NOT NULL")).all()
    schemes: dict[str, set[str]] = {}
    for model, security_model in rows:
        schemes.setdefault(model, set()).add(SCHEME_OF_SECURITY_MODEL.get(security_model, "sm4-cmac"))
    mixed = {model: sorted(found) for model, found in schemes.items() if len(found) > 1}
    if mixed:
        raise RuntimeError(f"meter models whose meters use different MAC schemes: {mixed}. One model has one scheme: give those meters separate models (`gasworks meters models add`, `gasworks meters set --model`) before upgrading.")
    for model, (scheme,) in schemes.items():
        c.execute(sa.text("UPDATE meter_models SET mac_scheme = :scheme WHERE name = :name"), {"scheme": scheme, "name": model})

    now = datetime.now(UTC)
    existing = {name for (name,) in c.execute(sa.text("SELECT name FROM meter_models"))}
    for name, seq_bytes, button, scheme, order, unit, interval, description in BUILT_IN:
        if name not in existing:
            c.execute(
                sa.text(
                    "INSERT INTO meter_models (name, purchase_seq_bytes, reopen_needs_button, created_at, mac_scheme, di_byte_order, credit_unit, "
                    "report_interval_s, description) VALUES (:name, :seq_bytes, :button, :now, :scheme, :order, :unit, :interval, :description)"
                ),
                {"name": name, "seq_bytes": seq_bytes, "button": button, "now": now, "scheme": scheme, "order": order, "unit": unit, "interval": interval, "description": description},
            )
    # A meter with no delivery model takes its frame-security model, which is now a stored profile.
    c.execute(sa.text("UPDATE meters SET model = (SELECT s.model FROM meter_frame_security s WHERE s.serial = meters.serial) WHERE model IS NULL AND serial IN (SELECT serial FROM meter_frame_security)"))
    with op.batch_alter_table("meter_frame_security", schema=None) as batch_op:
        batch_op.drop_column("model")


def downgrade() -> None:
    with op.batch_alter_table("meter_frame_security", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=40), server_default="cjt188-sm4", nullable=False))
    c = op.get_bind()
    for security_model, scheme in SCHEME_OF_SECURITY_MODEL.items():
        c.execute(
            sa.text("UPDATE meter_frame_security SET model = :security_model WHERE serial IN (SELECT m.serial FROM meters m JOIN meter_models mm ON mm.name = m.model WHERE mm.mac_scheme = :scheme)"),
            {"security_model": security_model, "scheme": scheme},
        )
    with op.batch_alter_table("kiosks", schema=None) as batch_op:
        batch_op.drop_column("opening_hours")
    with op.batch_alter_table("meters", schema=None) as batch_op:
        batch_op.drop_column("credit_fen")
    with op.batch_alter_table("meter_models", schema=None) as batch_op:
        batch_op.drop_column("description")
        batch_op.drop_column("report_interval_s")
        batch_op.drop_column("credit_unit")
        batch_op.drop_column("di_byte_order")
        batch_op.drop_column("mac_scheme")
