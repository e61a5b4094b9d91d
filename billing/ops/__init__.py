"""Operations: logging, metrics, readiness, the HTTP side port."""
