"""The resident's page: /p/{payment_id}?t={token}. Plain HTML, readable on any phone, Chinese first."""

from datetime import datetime
from html import escape
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from gasworks.bootstrap import System
from gasworks.domain.money import fen_to_yuan_text
from gasworks.services import timeline
from gasworks.services.timeline import Status, Text, Timeline

_STYLE = """
body{font-family:system-ui,-apple-system,"PingFang SC","Microsoft YaHei",sans-serif;margin:0;background:#f5f6f8;color:#1d2129}
main{max-width:28rem;margin:0 auto;padding:1rem}
.card{background:#fff;border-radius:12px;padding:1rem 1.2rem;margin-bottom:1rem;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h1{font-size:1.35rem;margin:.2rem 0}.en{color:#6b7280;font-size:.9rem;margin:.1rem 0 .4rem}
.amount{font-size:1.6rem;font-weight:600}.ok{color:#0a7d32}.wait{color:#b45309}.bad{color:#b91c1c}
ol{list-style:none;padding:0;margin:0}li{padding:.5rem 0 .5rem 1.6rem;position:relative;border-left:2px solid #d1d5db;margin-left:.5rem}
li:before{content:"";position:absolute;left:-.45rem;top:.75rem;width:.8rem;height:.8rem;border-radius:50%;background:#d1d5db}
li.done{border-color:#0a7d32}li.done:before{background:#0a7d32}.time{color:#6b7280;font-size:.85rem}
"""

_TONE = {Status.GAS_AVAILABLE: "ok", Status.STUCK: "bad", Status.HELD: "bad", Status.CLOSED_FOR_SAFETY: "bad"}


def _both(text: Text, tag: str = "p") -> str:
    return f"<{tag}>{escape(text.zh)}</{tag}><p class='en' lang='en'>{escape(text.en)}</p>"


def render(t: Timeline, tz: ZoneInfo) -> str:
    def when(at: datetime | None) -> str:
        return at.astimezone(tz).strftime("%Y-%m-%d %H:%M") if at else ""

    tone = _TONE.get(t.status, "wait")
    steps = "".join(f"<li class='{'done' if s.done else ''}'>{escape(s.title.zh)} <span class='en'>{escape(s.title.en)}</span><div class='time'>{when(s.at) if s.done else ''}</div></li>" for s in t.steps)
    next_step = f"<section class='card'><h2>下一步 <span class='en'>Next step</span></h2>{_both(t.next_step)}</section>" if t.next_step else ""
    kiosks = "".join(
        f"<li class='kiosk'>{escape(n.kiosk.name)} <span class='time'>{escape(n.kiosk.address or n.kiosk.community)}</span>"
        + (f"<div class='time' data-distance-m='{n.distance_m}'>约 {n.distance_m} 米 · about {n.distance_m} m</div>" if n.distance_m is not None else "")
        + (f"<div class='time' data-hours>营业时间 Open {escape(n.kiosk.opening_hours)}</div>" if n.kiosk.opening_hours else "")
        + f"<div><a href='{escape(n.map_url)}' rel='noopener' target='_blank'>地图 Map</a> · <a href='{escape(n.geo_uri)}'>导航 Directions</a></div></li>"
        for n in t.kiosks
    )
    nearest = f"<section class='card'><h2>最近的自助机 <span class='en'>Nearest kiosks</span></h2><ol>{kiosks}</ol></section>" if kiosks else ""
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="robots" content="noindex"><title>购气进度 · Gas purchase</title><style>{_STYLE}</style></head>
<body><main>
<section class="card"><div class="amount">¥{escape(fen_to_yuan_text(t.payment.amount_fen))}</div>
<div class="{tone}" data-status="{escape(t.status)}">{_both(t.headline, "h1")}</div>
<p class="time">户号 Account {escape(t.payment.account_no or "-")} · {escape(t.payment.id)}</p></section>
<section class="card"><ol>{steps}</ol></section>
{next_step}
{nearest}
<p class="time" data-timezone="{escape(tz.key)}">时间均为当地时间（{escape(tz.key)}）· Times are local ({escape(tz.key)})</p>
</main></body></html>"""


def resident_routes(system: System) -> APIRouter:
    router = APIRouter()
    tz = ZoneInfo(system.settings.local_timezone)

    @router.get("/p/{payment_id}", response_class=HTMLResponse, include_in_schema=False)
    def resident_page(payment_id: str, t: str = Query("", max_length=64)) -> HTMLResponse:
        timeline.check_resident_token(system.resident_link_secret, payment_id, t)
        found = timeline.payment_timeline(payment_id, system.new_uow(), hotline=system.settings.service_hotline)
        return HTMLResponse(render(found, tz), headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})

    return router
