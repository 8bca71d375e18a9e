# gangway image: the CLI with QEMU for host agents (agents run privileged, with /dev/kvm).
FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils make gcc gcc-multilib binutils \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/gangway
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY . .
RUN make -s -C guest
ENTRYPOINT ["node", "bin/gangway.mjs"]
