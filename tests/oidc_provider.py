"""A real, minimal OpenID Connect provider on 127.0.0.1 for the sign-in tests: discovery, an authorize endpoint
that consents at once as `email` (set by the test), a token endpoint issuing RS256-signed id_tokens that carry
the request's nonce, and its JWKS. Streamlit's st.login (Authlib) talks to it as to any provider."""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from authlib.jose import JsonWebKey, jwt


class OIDCProvider:
    def __init__(self, client_id: str):
        self.client_id = client_id
        self.email = "nobody@example.org"
        self.verified = True  # the email_verified claim
        self.key = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": "test-key"})
        self._codes: dict[str, tuple[str, str]] = {}  # code -> (nonce, email)
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _json(self, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urlsplit(self.path)
                if url.path == "/.well-known/openid-configuration":
                    base = provider.issuer
                    self._json({"issuer": base, "authorization_endpoint": f"{base}/authorize",
                                "token_endpoint": f"{base}/token", "jwks_uri": f"{base}/jwks",
                                "response_types_supported": ["code"], "subject_types_supported": ["public"],
                                "id_token_signing_alg_values_supported": ["RS256"],
                                "scopes_supported": ["openid", "email", "profile"]})
                elif url.path == "/jwks":
                    self._json({"keys": [provider.key.as_dict(is_private=False)]})
                elif url.path == "/authorize":
                    q = {k: v[0] for k, v in parse_qs(url.query).items()}
                    code = secrets.token_urlsafe(16)
                    provider._codes[code] = (q.get("nonce", ""), provider.email)
                    self.send_response(302)
                    self.send_header("Location", f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}")
                    self.end_headers()
                else:
                    self.send_error(404)

            def do_POST(self):
                if urlsplit(self.path).path != "/token":
                    self.send_error(404)
                    return
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()}
                nonce, email = provider._codes.pop(form.get("code", ""), ("", ""))
                if not email:
                    self.send_error(400)
                    return
                now = int(time.time())
                claims = {"iss": provider.issuer, "sub": email, "aud": provider.client_id, "iat": now,
                          "exp": now + 600, "nonce": nonce, "email": email, "email_verified": provider.verified, "name": email}
                id_token = jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, provider.key).decode()
                self._json({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 600,
                            "id_token": id_token})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
