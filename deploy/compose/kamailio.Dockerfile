# Kamailio with app_python3 and the sipauth client, for deploy/compose.yaml.
# kamailio.cfg and sipauth_kemi.py come from clients/kamailio, mounted by the compose file.
FROM debian:bookworm-slim

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       kamailio kamailio-python3-modules python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*

# Kamailio's embedded Python reads the client from here (SIPAUTH_PYTHON_PATH in kamailio.cfg).
COPY clients/python /src/sipauth-client
RUN python3 -m pip install --no-cache-dir --target /usr/local/lib/kamailio-sipauth/site-packages /src/sipauth-client \
    && rm -rf /src

EXPOSE 5060/udp
