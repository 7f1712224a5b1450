"""Reading a channel's answer without believing its size: at most a bound, then refused."""

import httpx

from gasworks.services.channel_gateway import GatewayError


def read_at_most(response: httpx.Response, bytes_max: int, what: str) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > bytes_max:
            raise GatewayError("ANSWER_TOO_LARGE", f"{what}: the answer is larger than {bytes_max} bytes; not read further", retryable=False)
        chunks.append(chunk)
    return b"".join(chunks)
