"""FastAPI application of the auth service (OpenAPI at ``/docs`` and ``/openapi.json``)."""

import hmac
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator import metrics
from pyengine.service.tokens import TokenError, bearer_token

from .config import AuthConfig
from .service import AuthService, ServiceError

Perm = Literal["trade", "read", "admin", "read_any"]  # pyengine.service.tokens.PERMS (read_any: the operator)


# ---------------------------------------------------------------------------- models
class ErrorBody(BaseModel):
    code: str = Field(description="stable reason code")
    message: str
    details: dict = Field(default_factory=dict)


class ErrorOut(BaseModel):
    """Same envelope as the coordinator's REST API."""

    error: ErrorBody


def _envelope(code: str, message: str = "", **details) -> dict:
    return {"error": {"code": code, "message": message or code.replace("_", " "), "details": details}}


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class RefreshIn(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class LogoutIn(BaseModel):
    refresh_token: str | None = Field(default=None, min_length=1, max_length=512)


class RevokeIn(BaseModel):
    jti: str | None = Field(default=None, min_length=1, max_length=256)
    refresh_token: str | None = Field(default=None, min_length=1, max_length=512)


class TokenPairOut(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="access token lifetime, seconds")
    refresh_token: str
    refresh_expires_in: int = Field(description="refresh token lifetime, seconds")


class RevokedOut(BaseModel):
    revoked: int = Field(description="number of jtis newly added to the revocation list")


class RevocationOut(BaseModel):
    seq: int
    jti: str
    exp: int


class JwkOut(BaseModel):
    kid: str
    kty: Literal["OKP"] = "OKP"
    alg: Literal["EdDSA"] = "EdDSA"
    crv: Literal["Ed25519"] = "Ed25519"
    use: Literal["sig"] = "sig"
    x: str = Field(description="base64url public key (32 bytes)")


class KeyInfoOut(JwkOut):
    status: Literal["active", "published", "retired"]
    created_at: int
    retired_at: int | None = None


class RemovedKeyOut(BaseModel):
    kid: str
    status: Literal["retired"]
    retired_at: int


class AccountIn(BaseModel):
    account: str | None = Field(default=None, max_length=64, description="generated if absent")


class AccountOut(BaseModel):
    account: str
    created_at: int


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    account: str = Field(min_length=1, max_length=64)
    perms: list[Perm] | None = Field(default=None, description="default: trade, read")


class UserOut(BaseModel):
    uid: str
    username: str
    account: str
    perms: list[Perm]
    disabled: bool


class DisabledOut(BaseModel):
    uid: str
    disabled: bool
    revoked: int


class PrincipalOut(BaseModel):
    uid: str
    account: str
    perms: list[Perm]
    jti: str
    exp: int
    nbf: int | None
    kid: str


_ERRORS = {401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 409: {"model": ErrorOut}}


# ---------------------------------------------------------------------------- app
def create_app(config: AuthConfig | None = None, service: AuthService | None = None) -> FastAPI:
    """Build the app. Opens the database now (errors surface before serving)."""
    if service is None:
        service = AuthService(config if config is not None else AuthConfig.from_env())
    svc = service
    admin_key = svc.config.admin_api_key

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        try:
            yield
        finally:
            svc.close()

    app = FastAPI(
        title="matchx auth service",
        version="1",
        description="Login, refresh-token rotation, revocation feed and Ed25519 JWKs for matchx.",
        lifespan=lifespan,
    )
    app.state.service = svc
    metrics.install(app, "auth")

    @app.exception_handler(ServiceError)
    async def _service_error(_req: Request, exc: ServiceError):
        headers = {"Cache-Control": "no-store"}
        if exc.status == 401:
            headers["WWW-Authenticate"] = f'Bearer error="{exc.reason}"'
        return JSONResponse(_envelope(exc.reason, exc.detail), exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError):
        errs = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
        body = _envelope("validation_error", "malformed request", errors=jsonable_encoder(errs))
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(_envelope(code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.middleware("http")
    async def _no_store(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def require_admin(x_admin_key: Annotated[str | None, Header()] = None) -> None:
        if admin_key is None:
            raise ServiceError("admin_disabled", "no admin API key configured")
        if not x_admin_key:
            raise ServiceError("admin_required", "X-Admin-Key header required")
        if not hmac.compare_digest(x_admin_key.encode(), admin_key.encode()):
            raise ServiceError("bad_admin_key")

    def optional_admin(x_admin_key: Annotated[str | None, Header()] = None) -> bool:
        if x_admin_key is None:
            return False
        require_admin(x_admin_key)
        return True

    def optional_bearer(authorization: Annotated[str | None, Header()] = None) -> str | None:
        if authorization is None:
            return None
        try:
            return bearer_token(authorization)
        except TokenError as exc:
            raise ServiceError(exc.reason, exc.detail) from None

    Admin = Depends(require_admin)

    # -- public ------------------------------------------------------------------------
    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict:
        return {"status": "ok", "active_kid": svc.active_kid}

    @app.get("/v1/keys", response_model=list[JwkOut], tags=["keys"])
    def keys() -> list[dict]:
        """Published Ed25519 public keys (JWK, RFC 8037); active key first."""
        return svc.published_jwks()

    @app.get("/.well-known/jwks.json", tags=["keys"])
    def jwks() -> dict:
        """The same keys as a standard JWK Set (RFC 7517)."""
        return {"keys": svc.published_jwks()}

    @app.post("/v1/login", response_model=TokenPairOut, responses=_ERRORS, tags=["session"])
    def login(body: LoginIn) -> dict:
        return svc.login(body.username, body.password).public()

    @app.post("/v1/refresh", response_model=TokenPairOut, responses=_ERRORS, tags=["session"])
    def refresh(body: RefreshIn) -> dict:
        """Rotate a refresh token. Re-presenting a used one revokes the whole login family."""
        return svc.refresh(body.refresh_token).public()

    @app.post("/v1/logout", response_model=RevokedOut, responses=_ERRORS, tags=["session"])
    def logout(
        body: LogoutIn | None = None,
        bearer: Annotated[str | None, Depends(optional_bearer)] = None,
    ) -> dict:
        """End the session of ``refresh_token`` (or of the bearer access token)."""
        rt = body.refresh_token if body is not None else None
        return svc.logout(refresh_token=rt, access_token=bearer)

    @app.post("/v1/revoke", response_model=RevokedOut, responses=_ERRORS, tags=["session"])
    def revoke(
        body: RevokeIn,
        is_admin: Annotated[bool, Depends(optional_admin)],
        bearer: Annotated[str | None, Depends(optional_bearer)] = None,
    ) -> dict:
        """``{refresh_token}``: revoke its family. ``{jti}``: revoke one access token (admin key,
        or the token owner's bearer token)."""
        return svc.revoke(jti=body.jti, refresh_token=body.refresh_token, is_admin=is_admin, access_token=bearer)

    @app.get("/v1/revocations", response_model=list[RevocationOut], tags=["revocation"])
    def revocations(
        since: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> list[dict]:
        """Incremental revocation feed, ``seq > since`` ascending."""
        return svc.revocations_since(since, limit)

    @app.get("/v1/me", response_model=PrincipalOut, responses=_ERRORS, tags=["session"])
    def me(bearer: Annotated[str | None, Depends(optional_bearer)] = None) -> dict:
        """The verified principal of the bearer access token."""
        p = svc.authenticate(bearer)
        return {
            "uid": p.uid,
            "account": p.account,
            "perms": list(p.perms),
            "jti": p.jti,
            "exp": p.exp,
            "nbf": p.nbf,
            "kid": p.kid,
        }

    # -- admin -------------------------------------------------------------------------
    @app.post(
        "/v1/admin/accounts",
        response_model=AccountOut,
        status_code=201,
        dependencies=[Admin],
        responses=_ERRORS,
        tags=["admin"],
    )
    def create_account(body: AccountIn | None = None) -> dict:
        return svc.create_account(body.account if body is not None else None)

    @app.post(
        "/v1/admin/users",
        response_model=UserOut,
        status_code=201,
        dependencies=[Admin],
        responses=_ERRORS,
        tags=["admin"],
    )
    def create_user(body: UserIn) -> dict:
        return svc.create_user(body.username, body.password, body.account, body.perms)

    @app.post(
        "/v1/admin/users/{username}/disable",
        response_model=DisabledOut,
        dependencies=[Admin],
        responses=_ERRORS,
        tags=["admin"],
    )
    def disable_user(username: str) -> dict:
        return svc.disable_user(username)

    @app.get(
        "/v1/admin/keys",
        response_model=list[KeyInfoOut],
        dependencies=[Admin],
        responses=_ERRORS,
        tags=["admin"],
    )
    def admin_keys() -> list[dict]:
        return svc.list_keys()

    @app.post(
        "/v1/admin/keys/rotate",
        response_model=KeyInfoOut,
        status_code=201,
        dependencies=[Admin],
        responses=_ERRORS,
        tags=["admin"],
    )
    def rotate_key() -> dict:
        return svc.rotate_key()

    @app.delete(
        "/v1/admin/keys/{kid}",
        response_model=RemovedKeyOut,
        dependencies=[Admin],
        responses=_ERRORS,
        tags=["admin"],
    )
    def remove_key(kid: str) -> dict:
        return svc.remove_key(kid)

    return app
