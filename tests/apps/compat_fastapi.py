"""FastAPI, one route: a row of the subinterpreter compatibility table (refused:
pydantic-core, a PyO3 extension, cannot load in a subinterpreter)."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def index():
    return {"framework": "fastapi"}
