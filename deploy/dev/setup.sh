#!/bin/sh
# Set up a development machine for sipauth (used by the Makefile).
#   setup.sh venv VENV              create VENV with Python >= 3.11 and install sipauth + client + dev tools
#   setup.sh packages BIN:PKG ...   install the Debian package PKG for each missing command BIN
#                                   (BIN "dpkg": install PKG unless dpkg lists it as installed)
#   setup.sh kamailio-venv DIR      venv of Debian's /usr/bin/python3 (Kamailio's embedded Python) with the client
# Installs Debian packages only as root or with passwordless sudo; otherwise it
# stops and prints the exact command to run.
set -eu

die() { echo "setup: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo "$@"
    else return 1
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "missing: $*; install them with your system's package manager"
    if ! as_root true; then
        die "missing Debian packages: $*
run:  sudo apt-get update && sudo apt-get install -y $*"
    fi
    echo "setup: installing Debian packages: $*" >&2
    # Keep package installs from starting system daemons (slapd, samba, redis...):
    # the tests start their own on free loopback ports.
    policy_added=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        policy_added=1
    fi
    status=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || status=$?
    if [ "$status" = 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" || status=$?
    fi
    [ -n "$policy_added" ] && as_root rm -f /usr/sbin/policy-rc.d
    [ "$status" = 0 ] || die "apt-get failed (exit $status) installing: $*"
}

find_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}

cmd_venv() {
    venv=$1
    python=$(find_python) || { apt_install python3 python3-venv; python=$(find_python) || die "Python >= 3.11 is required"; }
    if [ ! -x "$venv/bin/python" ]; then
        if ! "$python" -m venv "$venv" 2>/dev/null; then
            rm -rf "$venv"
            minor=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            apt_install "python$minor-venv"
            "$python" -m venv "$venv"
        fi
    fi
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e clients/python -e '.[dev]'
}

cmd_packages() {
    missing=""
    for pair in "$@"; do
        bin=${pair%%:*}; pkg=${pair#*:}
        if [ "$bin" = dpkg ]; then
            dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" && continue
            case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
        elif ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
            case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
        fi
    done
    # shellcheck disable=SC2086
    [ -z "$missing" ] || apt_install $missing
}

cmd_kamailio_venv() {
    venv=$1
    # app_python3 embeds this interpreter, whatever the PATH says.
    python=/usr/bin/python3
    [ -x "$python" ] || apt_install python3
    if [ ! -x "$venv/bin/python" ]; then
        if ! "$python" -m venv "$venv" 2>/dev/null; then
            rm -rf "$venv"
            apt_install python3-venv
            "$python" -m venv "$venv"
        fi
    fi
    # Editable: the tests run the client as it is in the working tree.
    "$venv/bin/python" -m pip install -q -e clients/python
}

case "${1:-}" in
    venv) shift; cmd_venv "$@" ;;
    kamailio-venv) shift; cmd_kamailio_venv "$@" ;;
    packages) shift; cmd_packages "$@" ;;
    *) die "usage: setup.sh venv VENV | kamailio-venv DIR | packages BIN:PKG ..." ;;
esac
