"""kiln.ir.ops"""
