"""The core: pure Python + numpy + faiss + cryptography. No boto3, no environment, no HTTP."""
