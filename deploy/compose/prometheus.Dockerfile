# Prometheus from Debian's package (no registry needed: BASE can be the
# strata-debian:bookworm image deploy/docker/base-image.sh builds). The
# configuration is mounted, not copied: docker-compose.yml mounts
# deploy/prometheus/ (prometheus.yml and alerts.yml) at /etc/prometheus/strata.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# policy-rc.d: the package's postinst must not start a Prometheus in the
# build (there is no init system here; the container runs it below).
# The path-exclude: moment-timezone's raw time zone data, 200 MB of JSON the
# web UI never loads (it loads moment-timezone-with-data.min.js).
RUN set -eu; \
    echo 'path-exclude /usr/share/javascript/moment-timezone/data/*' \
        >/etc/dpkg/dpkg.cfg.d/strata-prometheus; \
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; \
    chmod 0755 /usr/sbin/policy-rc.d; \
    apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
    rm -f /usr/sbin/policy-rc.d; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -m 0755 -o prometheus -g prometheus /var/lib/prometheus/strata; \
    prometheus --version

VOLUME ["/var/lib/prometheus/strata"]
USER prometheus
EXPOSE 9090
# Ready once the rules are loaded and the first scrapes can be answered.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /-/ready HTTP/1.0\\r\\n\\r\\n' >&3 && IFS= read -r -t 4 line <&3 && [[ $line == 'HTTP/1.'?' 200'* ]]"]
ENTRYPOINT ["prometheus"]
CMD ["--config.file=/etc/prometheus/strata/prometheus.yml", \
     "--storage.tsdb.path=/var/lib/prometheus/strata", \
     "--web.listen-address=0.0.0.0:9090"]
