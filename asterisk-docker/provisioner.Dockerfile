# The provisioner service, built from the repository root (see compose.yaml).
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY provisioner/ provisioner/
COPY templates/ templates/
COPY config/ config/
RUN pip install --no-cache-dir -c constraints.txt .
CMD ["provisioner", "serve"]
