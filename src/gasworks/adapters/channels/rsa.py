"""SHA256withRSA (PKCS#1 v1.5), as WeChat Pay v3 and Alipay RSA2 both use it."""

import base64
import binascii
import functools

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def new_private_key_pem(bits: int = 2048) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def public_key_pem(private_key_pem: str) -> str:
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def check_public_key_pem(pem: str) -> None:
    """Raises ValueError unless `pem` is an RSA public key."""
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")


def check_private_key_pem(pem: str) -> None:
    """Raises ValueError unless `pem` is an unencrypted RSA private key."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError as error:  # encrypted with a password
        raise ValueError(str(error)) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")


class RsaKeyChecks:
    """services.unit_of_work.KeyMaterialChecks for the RSA keys WeChat Pay and Alipay use."""

    def public_key_pem(self, pem: str) -> None:
        check_public_key_pem(pem)

    def private_key_pem(self, pem: str) -> None:
        check_private_key_pem(pem)


@functools.lru_cache(maxsize=16)
def _private_key(private_key_pem: str) -> rsa.RSAPrivateKey:
    """Parsing and checking a private key costs tens of milliseconds; a signer reuses its key."""
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@functools.lru_cache(maxsize=64)
def _public_key(public_key_pem: str) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(public_key_pem.encode())
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def sign_sha256_rsa(private_key_pem: str, message: bytes) -> str:
    key = _private_key(private_key_pem)
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify_sha256_rsa(public_key_pem: str, message: bytes, signature_b64: str) -> bool:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    key = _public_key(public_key_pem)
    try:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True
