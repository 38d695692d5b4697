"""Deploy an overlay fleet on AWS with boto3: plan, apply, status and destroy.

Every AWS call goes through ``overlay.aws.ClientFactory``, so the same code runs against an AWS
account or, in the tests, against moto's server on a loopback address.
"""
