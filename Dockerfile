# The stream jobs' image (used by docker-compose.yml). The policy and jobs are pure Python.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY schemas ./schemas
COPY docs ./docs
# Editable: the jobs read their Avro contracts from /app/schemas beside the package.
RUN pip install --no-cache-dir -e .
ENTRYPOINT ["streams"]
