#!/usr/bin/env bash
# Builds Strata's Debian package with cargo-deb:
#   ${CARGO_TARGET_DIR:-target}/debian/strata_<version>_<arch>.deb
#
#   deploy/debian/build.sh                  release build, then the package
#   deploy/debian/build.sh --binary PATH    package this strata binary instead
#                                           of building one (tests package
#                                           their debug build this way)
#   deploy/debian/build.sh --deb-version V  the package's version (default:
#                                           the crate's, revision 1)
#   deploy/debian/build.sh --lintian        run lintian on the result
#   deploy/debian/build.sh --fast           lighter compression (tests)
#
# Installs cargo-deb (cargo install) and lintian (apt-get) when missing.
# The package: /usr/bin/strata, /etc/strata/strata.toml (a conffile: the
# embedded defaults with data_dir = /var/lib/strata), strata.service,
# the strata system user (made by postinst), /var/lib/strata (0750), man
# pages and bash, zsh and fish completions. README.Debian says how to run it.
set -euo pipefail
cd "$(dirname "$0")/../.."

CARGO_DEB_VERSION=3.8.0
binary=""
deb_version=""
lintian=false
fast=false
while (($#)); do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --deb-version) deb_version="$2"; shift 2 ;;
    --lintian) lintian=true; shift ;;
    --fast) fast=true; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
if ! cargo deb --version >/dev/null 2>&1; then
  echo "== installing cargo-deb $CARGO_DEB_VERSION (cargo install, a few minutes)" >&2
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" >&2
fi

if [ -z "$binary" ]; then
  echo "== cargo build --release -p strata" >&2
  cargo build --release --locked -p strata
  binary="$target/release/strata"
  pkg_target="$target"
  out="$target/debian"
else
  # cargo-deb packages what it finds as target/release/strata: give it a
  # target directory of its own holding the binary asked for.
  [ -x "$binary" ] || { echo "build.sh: $binary is not an executable" >&2; exit 2; }
  pkg_target="$target/debian-package"
  out="$target/debian"
  rm -rf "$pkg_target"
  mkdir -p "$pkg_target/release"
  cp "$binary" "$pkg_target/release/strata"
  binary="$pkg_target/release/strata"
fi

# What the package installs besides the binary, made from the binary itself
# (so it always matches it).
assets="$pkg_target/release/debian-assets"
rm -rf "$assets"
mkdir -p "$assets/completions" "$assets/man"
sed 's|^data_dir = "strata-data"$|data_dir = "/var/lib/strata"|' crates/strata/src/default.toml >"$assets/strata.toml"
grep -q '^data_dir = "/var/lib/strata"$' "$assets/strata.toml" \
  || { echo "build.sh: data_dir not found in crates/strata/src/default.toml" >&2; exit 1; }
sed -i '1s|.*|# Strata node configuration (/etc/strata/strata.toml, read by strata.service).|' "$assets/strata.toml"
"$binary" completions bash >"$assets/completions/strata.bash"
"$binary" completions zsh >"$assets/completions/_strata"
"$binary" completions fish >"$assets/completions/strata.fish"
"$binary" man-pages --dir "$assets/man" >&2
gzip -9n "$assets"/man/*.1

echo "== cargo deb" >&2
mkdir -p "$out"
# Stripped, as Debian's binaries are; `cargo deb --dbgsym` could ship the
# release profile's line tables (for backtraces) in a package of their own.
args=(deb -p strata --no-build --output "$out" --strip)
[ -n "$deb_version" ] && args+=(--deb-version "$deb_version")
$fast && args+=(--fast)
deb="$(CARGO_TARGET_DIR="$pkg_target" cargo "${args[@]}" | tail -n 1)"
echo "$deb"

if $lintian; then
  if ! command -v lintian >/dev/null 2>&1; then
    echo "== installing lintian (apt-get)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lintian >&2
  fi
  # The one tag left on purpose is overridden, with the reason, in the
  # package itself (deploy/debian/lintian-overrides); anything else fails.
  lintian --info --fail-on warning "$deb" >&2
  echo "lintian: clean" >&2
fi
