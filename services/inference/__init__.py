"""The inference service: Ray Serve deployments answer the requests topic.

- ``engine``: the engine interface and its engines (llama.cpp on CPU; vLLM through Ray
  Serve LLM on GPU nodes).
- ``app``: the Ray Serve application: one ``LLMServer`` deployment per model version and
  a ``Router`` ingress with weights, sticky assignment, shadow traffic and an
  OpenAI-compatible HTTP route.
- ``bridge``: the Kafka consumer group that feeds the application and publishes
  responses.
"""
