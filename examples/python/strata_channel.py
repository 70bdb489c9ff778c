"""The channel to a Strata node: plaintext, or TLS (trusting the CA given) with an
API token sent as `authorization: Bearer <token>` on every call."""
import os

import grpc


def add_arguments(parser):
    parser.add_argument("--server", default=os.environ.get("STRATA_SERVER", "127.0.0.1:7878"))
    parser.add_argument("--tls-ca", default=os.environ.get("STRATA_TLS_CA"),
                        help="connect with TLS, trusting this CA's certificates (PEM)")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS, trusting the system's CAs (implied by --tls-ca)")
    parser.add_argument("--token", default=os.environ.get("STRATA_TOKEN"),
                        help="an API token (`strata token create --user NAME`); needs TLS")


def open_channel(args):
    if args.tls_ca or args.tls:
        roots = None
        if args.tls_ca:
            with open(args.tls_ca, "rb") as f:
                roots = f.read()
        # roots None: the system's trusted CAs.
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        if args.token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(args.token))
        return grpc.secure_channel(args.server, credentials)
    if args.token:
        raise SystemExit("a token is sent only over TLS: give --tls-ca (or STRATA_TLS_CA) or --tls")
    return grpc.insecure_channel(args.server)
