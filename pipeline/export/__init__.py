"""From Keras to a shipped file and its numbers: conversion, the LiteRT runner, the one measurement of a
``.tflite``, cost counting, and the validation report's schema."""
